use super::*;
use proptest::prelude::*;
use serde_json::json;

fn ranges() -> Ranges {
    Ranges::new("10.96.0.0/12".parse().expect("cidr"))
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service")
}

/// A Service `name` in `default` with `spec`.
fn named(name: &str, spec: serde_json::Value) -> Service {
    svc(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}))
}

fn web(spec_extra: serde_json::Value) -> Service {
    let mut spec = json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]});
    if let (Some(m), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    named("web", spec)
}

fn prep(manifest: &Service, cur: Option<&Service>, in_use: &InUse) -> Result<Service, Vec<String>> {
    prepare(manifest, cur, &manifest.key(), in_use, &ranges())
}

fn ok(manifest: &Service, cur: Option<&Service>, in_use: &InUse) -> Service {
    prep(manifest, cur, in_use).expect("prepared")
}

fn err(manifest: &Service, cur: Option<&Service>, in_use: &InUse) -> String {
    prep(manifest, cur, in_use).expect_err("refused").join("; ")
}

/// In use: what `services` hold.
fn holding(services: &[&Service]) -> InUse {
    let held: BTreeMap<String, Held> = services.iter().map(|s| (s.key(), held(s))).collect();
    InUse::new(&Index::default(), &held)
}

fn ip(s: &Service) -> Ipv4Addr {
    s.spec
        .cluster_ip
        .as_deref()
        .expect("clusterIP")
        .parse()
        .expect("an IP")
}

#[test]
fn cluster_ip_is_allocated_in_the_cidr_and_mirrored_in_cluster_ips() {
    let s = ok(&web(json!({})), None, &InUse::default());
    let a = ip(&s);
    assert!(ranges().service_cidr.contains(&a), "{a}");
    assert_eq!(s.spec.cluster_ips, vec![a.to_string()]);
    // dynamic picks avoid the lower band kept for static addresses (KEP-3070)
    assert!(
        u32::from(a) - u32::from(Ipv4Addr::new(10, 96, 0, 0)) >= 256,
        "{a}"
    );
    // the same service name gets the same address in another cluster
    assert_eq!(ip(&ok(&web(json!({})), None, &InUse::default())), a);
}

#[test]
fn empty_cluster_ip_means_allocate() {
    let s = ok(&web(json!({"clusterIP": ""})), None, &InUse::default());
    assert!(ranges().service_cidr.contains(&ip(&s)));
}

#[test]
fn api_server_defaults_are_written() {
    let s = ok(
        &web(
            json!({"type": "LoadBalancer", "sessionAffinity": "ClientIP",
                    "ports": [{"port": 53, "protocol": "UDP"}]}),
        ),
        None,
        &InUse::default(),
    );
    let v = serde_json::to_value(&s).expect("json");
    assert_eq!(v["spec"]["type"], "LoadBalancer");
    assert_eq!(
        v["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
    assert_eq!(v["spec"]["internalTrafficPolicy"], "Cluster");
    assert_eq!(v["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(v["spec"]["allocateLoadBalancerNodePorts"], true);
    assert_eq!(v["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(v["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(v["spec"]["ports"][0]["targetPort"], 53);
    assert_eq!(v["spec"]["ports"][0]["protocol"], "UDP");
    let plain = ok(&web(json!({})), None, &InUse::default());
    let v = serde_json::to_value(&plain).expect("json");
    assert_eq!(v["spec"]["type"], "ClusterIP");
    assert_eq!(v["spec"]["sessionAffinity"], "None");
    assert!(v["spec"].get("externalTrafficPolicy").is_none());
    assert!(v["spec"].get("sessionAffinityConfig").is_none());
}

#[test]
fn first_and_tenth_addresses_are_never_picked_but_may_be_asked_for() {
    // A /28: no lower band, so dynamic picks walk the whole range.
    let r = Ranges::new("10.96.0.0/28".parse().expect("cidr"));
    let mut in_use = InUse::default();
    let mut got = BTreeSet::new();
    for i in 0..11 {
        let m = named(&format!("s{i}"), json!({"ports": [{"port": 80}]}));
        let s = prepare(&m, None, &m.key(), &in_use, &r).expect("room left");
        let a = ip(&s);
        in_use.claim(&m.key(), &held(&s));
        got.insert(a);
    }
    // 16 addresses - network - broadcast - .1 - .10 = 12; 11 taken, all distinct
    assert_eq!(got.len(), 11);
    for reserved in ["10.96.0.0", "10.96.0.1", "10.96.0.10", "10.96.0.15"] {
        assert!(!got.contains(&reserved.parse().expect("ip")), "{reserved}");
    }
    let m = named("s11", json!({"ports": [{"port": 80}]}));
    let last = prepare(&m, None, &m.key(), &in_use, &r).expect("one left");
    in_use.claim(&m.key(), &held(&last));
    let m = named("full", json!({"ports": [{"port": 80}]}));
    let e = prepare(&m, None, &m.key(), &in_use, &r)
        .expect_err("full")
        .join("; ");
    assert!(
        e.contains("spec.clusterIP") && e.contains("no free address left in 10.96.0.0/28"),
        "{e}"
    );
    // explicitly asked for: fine
    for asked in ["10.96.0.1", "10.96.0.10"] {
        let m = named("kube", json!({"clusterIP": asked, "ports": [{"port": 53}]}));
        let s = prepare(&m, None, &m.key(), &InUse::default(), &r).expect("asked");
        assert_eq!(s.spec.cluster_ip.as_deref(), Some(asked));
    }
}

#[test]
fn requested_cluster_ip_outside_the_cidr_is_refused_naming_field_and_value() {
    let e = err(
        &web(json!({"clusterIP": "10.112.0.5"})),
        None,
        &InUse::default(),
    );
    assert_eq!(
        e,
        "spec.clusterIP: Invalid value: \"10.112.0.5\": the provided IP (10.112.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    );
    for bad in ["10.96.0.0", "10.111.255.255"] {
        let e = err(&web(json!({"clusterIP": bad})), None, &InUse::default());
        assert!(e.contains("not in the valid range"), "{bad}: {e}");
    }
    let e = err(
        &web(json!({"clusterIP": "fd00::1"})),
        None,
        &InUse::default(),
    );
    assert!(e.contains("spec.clusterIP") && e.contains("IPv4"), "{e}");
}

#[test]
fn requested_cluster_ip_held_by_another_service_is_refused() {
    let other = ok(
        &named(
            "other",
            json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
        ),
        None,
        &InUse::default(),
    );
    let e = err(
        &web(json!({"clusterIP": "10.96.0.50"})),
        None,
        &holding(&[&other]),
    );
    assert_eq!(
        e,
        "spec.clusterIP: Invalid value: \"10.96.0.50\": provided IP is already allocated (to service default/other)"
    );
    // the holder itself may re-apply it
    let again = ok(
        &named(
            "other",
            json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
        ),
        Some(&other),
        &holding(&[&other]),
    );
    assert_eq!(again.spec.cluster_ip.as_deref(), Some("10.96.0.50"));
}

#[test]
fn update_keeps_cluster_ip_and_refuses_changing_it() {
    let first = ok(&web(json!({})), None, &InUse::default());
    let in_use = holding(&[&first]);
    let again = ok(&web(json!({})), Some(&first), &in_use);
    assert_eq!(again.spec.cluster_ip, first.spec.cluster_ip);
    let same = ok(
        &web(json!({"clusterIP": first.spec.cluster_ip})),
        Some(&first),
        &in_use,
    );
    assert_eq!(same.spec.cluster_ip, first.spec.cluster_ip);
    let e = err(
        &web(json!({"clusterIP": "10.96.0.77"})),
        Some(&first),
        &in_use,
    );
    assert!(
        e.starts_with("spec.clusterIP: Invalid value: \"10.96.0.77\": field is immutable"),
        "{e}"
    );
    let e = err(&web(json!({"clusterIP": "None"})), Some(&first), &in_use);
    assert!(e.contains("field is immutable"), "{e}");
}

#[test]
fn headless_gets_no_address_and_stays_headless() {
    let s = ok(&web(json!({"clusterIP": "None"})), None, &InUse::default());
    assert_eq!(s.spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(s.spec.cluster_ips, vec!["None".to_string()]);
    assert_eq!(held(&s), Held::default());
    let again = ok(&web(json!({})), Some(&s), &InUse::default());
    assert_eq!(again.spec.cluster_ip.as_deref(), Some("None"));
}

#[test]
fn external_name_gets_no_address_and_drops_a_previous_one() {
    let en = named(
        "db",
        json!({"type": "ExternalName", "externalName": "db.example.test"}),
    );
    let s = ok(&en, None, &InUse::default());
    assert_eq!(s.spec.cluster_ip, None);
    assert!(s.spec.cluster_ips.is_empty());
    let was = ok(
        &named("db", json!({"ports": [{"port": 5432}]})),
        None,
        &InUse::default(),
    );
    let s = ok(&en, Some(&was), &holding(&[&was]));
    assert_eq!(s.spec.cluster_ip, None);
    // and back: a new address is allocated
    let back = ok(
        &named("db", json!({"ports": [{"port": 5432}]})),
        Some(&s),
        &InUse::default(),
    );
    assert!(back.spec.cluster_ip.is_some());
}

#[test]
fn ipv6_families_and_dual_stack_are_refused() {
    let e = err(
        &web(json!({"ipFamilies": ["IPv6"]})),
        None,
        &InUse::default(),
    );
    assert!(
        e.contains("spec.ipFamilies[0]: Invalid value: \"IPv6\""),
        "{e}"
    );
    let e = err(
        &web(json!({"ipFamilyPolicy": "RequireDualStack"})),
        None,
        &InUse::default(),
    );
    assert!(e.contains("spec.ipFamilyPolicy"), "{e}");
}

fn node_ports(s: &Service) -> Vec<Option<u16>> {
    s.spec.ports.iter().map(|p| p.node_port).collect()
}

#[test]
fn node_ports_are_allocated_for_node_port_and_load_balancer_only() {
    for t in ["NodePort", "LoadBalancer"] {
        let s = ok(&web(json!({"type": t})), None, &InUse::default());
        let np = s.spec.ports[0].node_port.expect("nodePort");
        assert!(NODE_PORT_RANGE.contains(&np), "{t}: {np}");
        // the lower band (86 ports) is left for static picks
        assert!(np >= 30086, "{t}: {np}");
    }
    let s = ok(&web(json!({})), None, &InUse::default());
    assert_eq!(node_ports(&s), vec![None]);
    let s = ok(
        &web(json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false})),
        None,
        &InUse::default(),
    );
    assert_eq!(node_ports(&s), vec![None]);
}

#[test]
fn node_ports_are_unique_per_protocol() {
    let a = ok(
        &named(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        ),
        None,
        &InUse::default(),
    );
    let in_use = holding(&[&a]);
    let e = err(
        &named(
            "b",
            json!({"type": "NodePort", "ports": [{"port": 81, "nodePort": 30080}]}),
        ),
        None,
        &in_use,
    );
    assert_eq!(
        e,
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated (to service default/a)"
    );
    // UDP 30080 is a different key
    let b = ok(
        &named(
            "b",
            json!({"type": "NodePort", "ports": [{"port": 81, "protocol": "UDP", "nodePort": 30080}]}),
        ),
        None,
        &in_use,
    );
    assert_eq!(node_ports(&b), vec![Some(30080)]);
}

#[test]
fn node_port_out_of_range_is_refused_naming_the_field() {
    for bad in [80, 29999, 32768] {
        let e = err(
            &web(
                json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": bad}]}),
            ),
            None,
            &InUse::default(),
        );
        assert_eq!(
            e,
            format!(
                "spec.ports[0].nodePort: Invalid value: {bad}: provided port is not in the valid range. The range of valid ports is 30000-32767"
            )
        );
    }
}

#[test]
fn update_keeps_node_ports_by_port_name_and_type_change_drops_them() {
    let two = |t: &str| {
        web(
            json!({"type": t, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}),
        )
    };
    let first = ok(&two("NodePort"), None, &InUse::default());
    let in_use = holding(&[&first]);
    let nps = node_ports(&first);
    assert!(nps.iter().all(Option::is_some));
    assert_ne!(nps[0], nps[1]);
    // re-apply, and a change to LoadBalancer: kept
    assert_eq!(
        node_ports(&ok(&two("NodePort"), Some(&first), &in_use)),
        nps
    );
    let lb = ok(&two("LoadBalancer"), Some(&first), &in_use);
    assert_eq!(node_ports(&lb), nps);
    // ports reordered: still matched by name
    let swapped = ok(
        &web(
            json!({"type": "NodePort", "ports": [{"name": "https", "port": 443}, {"name": "http", "port": 80}]}),
        ),
        Some(&first),
        &in_use,
    );
    assert_eq!(node_ports(&swapped), vec![nps[1], nps[0]]);
    // a manifest value wins
    let set = ok(
        &web(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 31000}, {"name": "https", "port": 443}]}),
        ),
        Some(&first),
        &in_use,
    );
    assert_eq!(node_ports(&set), vec![Some(31000), nps[1]]);
    // type change to ClusterIP drops them
    let cip = ok(&two("ClusterIP"), Some(&first), &in_use);
    assert_eq!(node_ports(&cip), vec![None, None]);
    assert!(held(&cip).node_ports.is_empty());
}

#[test]
fn ports_with_one_number_share_a_node_port() {
    let dns = named(
        "dns",
        json!({"type": "NodePort", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
    );
    let s = ok(&dns, None, &InUse::default());
    let nps = node_ports(&s);
    assert_eq!(nps[0], nps[1]);
    assert!(nps[0].is_some());
}

#[test]
fn health_check_node_port_for_load_balancer_with_local_policy() {
    let local = web(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}));
    let s = ok(&local, None, &InUse::default());
    let hc = s.spec.health_check_node_port.expect("healthCheckNodePort");
    assert!(NODE_PORT_RANGE.contains(&hc));
    assert_ne!(Some(hc), s.spec.ports[0].node_port);
    assert!(held(&s).node_ports.contains(&("TCP".to_string(), hc)));
    // kept on re-apply, dropped when the policy goes back to Cluster
    let in_use = holding(&[&s]);
    assert_eq!(
        ok(&local, Some(&s), &in_use).spec.health_check_node_port,
        Some(hc)
    );
    let cluster = ok(&web(json!({"type": "LoadBalancer"})), Some(&s), &in_use);
    assert_eq!(cluster.spec.health_check_node_port, None);
    // asked for, but held by another service's nodePort
    let other = ok(
        &named(
            "other",
            json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 31111}]}),
        ),
        None,
        &InUse::default(),
    );
    let e = err(
        &web(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31111}),
        ),
        None,
        &holding(&[&other]),
    );
    assert!(
        e.starts_with(
            "spec.healthCheckNodePort: Invalid value: 31111: provided port is already allocated"
        ),
        "{e}"
    );
}

#[test]
fn every_error_of_a_service_is_reported() {
    let other = ok(
        &named(
            "other",
            json!({"clusterIP": "10.96.0.50", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        ),
        None,
        &InUse::default(),
    );
    let e = prep(
        &web(json!({"clusterIP": "10.96.0.50", "type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
        None,
        &holding(&[&other]),
    )
    .expect_err("two errors");
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn index_records_holders_and_reuses_them_on_retry() {
    let mut index = Index::default();
    let s = ok(&web(json!({"type": "NodePort"})), None, &InUse::default());
    index.set_holder("default/web", &held(&s), 1000);
    assert_eq!(index.cluster_ips.len(), 1);
    assert_eq!(index.node_ports.len(), 1);
    // An apply that wrote the index but not the service yet, retried: same address, even if
    // the hash would now pick another one because the preferred one is taken.
    let in_use = InUse::new(&index, &BTreeMap::new());
    let again = ok(&web(json!({"type": "NodePort"})), None, &in_use);
    assert_eq!(again.spec.cluster_ip, s.spec.cluster_ip);
    // Another service cannot have it.
    let e = err(
        &named(
            "b",
            json!({"clusterIP": s.spec.cluster_ip, "ports": [{"port": 1}]}),
        ),
        None,
        &in_use,
    );
    assert!(
        e.contains("already allocated (to service default/web)"),
        "{e}"
    );
    // set_holder keeps the age of kept entries and drops released ones
    let mut changed = held(&s);
    changed.node_ports.clear();
    index.set_holder("default/web", &changed, 2000);
    assert!(index.node_ports.is_empty());
    assert_eq!(
        index.cluster_ips.values().next().map(|h| h.since),
        Some(1000)
    );
}

#[test]
fn index_gc_waits_for_the_grace_period_and_keeps_what_services_hold() {
    let mut index = Index::default();
    let s = ok(&web(json!({"type": "NodePort"})), None, &InUse::default());
    index.set_holder("default/web", &held(&s), 1000);
    index.set_holder(
        "default/crashed",
        &Held {
            cluster_ip: Some(Ipv4Addr::new(10, 96, 9, 9)),
            node_ports: [("TCP".to_string(), 31999)].into(),
        },
        1000,
    );
    let stored: BTreeMap<String, Held> = [("default/web".to_string(), held(&s))].into();
    let mut young = index.clone();
    young.gc(&stored, 1000 + GRACE_SECS - 1);
    assert_eq!(young, index, "nothing goes before the grace period");
    index.gc(&stored, 1000 + GRACE_SECS);
    assert_eq!(index.cluster_ips.len(), 1);
    assert_eq!(index.node_ports.len(), 1);
    assert!(
        index
            .cluster_ips
            .values()
            .all(|h| h.service == "default/web")
    );
}

#[test]
fn index_release_drops_a_deleted_services_entries_at_once() {
    let mut index = Index::default();
    let a = ok(
        &named("a", json!({"type": "NodePort", "ports": [{"port": 1}]})),
        None,
        &InUse::default(),
    );
    let b = ok(
        &named("b", json!({"type": "NodePort", "ports": [{"port": 1}]})),
        None,
        &InUse::default(),
    );
    index.set_holder("default/a", &held(&a), 1000);
    index.set_holder("default/b", &held(&b), 1000);
    let stored: BTreeMap<String, Held> = [("default/b".to_string(), held(&b))].into();
    index.release(&|o| o == "default/a", &stored);
    assert!(index.cluster_ips.values().all(|h| h.service == "default/b"));
    assert!(index.node_ports.values().all(|h| h.service == "default/b"));
    assert_eq!(index.cluster_ips.len(), 1);
    // a namespace delete: everything of the namespace whose service is gone
    index.release(&|o| o.starts_with("default/"), &BTreeMap::new());
    assert_eq!(index, Index::default());
}

proptest! {
    /// Services allocated one after another (each seeing the ones before, as in one apply or
    /// in applies serialised by the index) never share a clusterIP or a nodePort, and every
    /// value is in range and not reserved.
    #[test]
    fn allocations_are_distinct_and_in_range(
        specs in prop::collection::vec((0usize..3, 1u16..4, any::<bool>()), 1..40),
        prefix in 20u8..=26,
    ) {
        let r = Ranges::new(Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), prefix).expect("cidr"));
        let mut in_use = InUse::default();
        let mut ips = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for (i, (t, nports, udp)) in specs.iter().enumerate() {
            let t = ["ClusterIP", "NodePort", "LoadBalancer"][*t];
            let proto = if *udp { "UDP" } else { "TCP" };
            let port_list: Vec<serde_json::Value> = (0..*nports)
                .map(|p| json!({"name": format!("p{p}"), "port": 80 + p, "protocol": proto}))
                .collect();
            let m = named(&format!("s{i}"), json!({"type": t, "ports": port_list}));
            let s = prepare(&m, None, &m.key(), &in_use, &r).expect("room");
            let h = held(&s);
            let a = h.cluster_ip.expect("clusterIP");
            let off = u32::from(a) - u32::from(r.service_cidr.network());
            prop_assert!(r.service_cidr.contains(&a));
            prop_assert!(off != 0 && off != 1 && off != 10 && a != r.service_cidr.broadcast());
            prop_assert!(ips.insert(a), "{} twice", a);
            for p in &h.node_ports {
                prop_assert!(NODE_PORT_RANGE.contains(&p.1));
                prop_assert!(ports.insert(p.clone()), "{:?} twice", p);
            }
            prop_assert_eq!(h.node_ports.len(), if t == "ClusterIP" { 0 } else { *nports as usize });
            in_use.claim(&m.key(), &h);
        }
    }
}
