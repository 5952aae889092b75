use super::*;
use proptest::prelude::*;
use serde_json::json;

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service")
}

/// Service `web` in `default`: selector app=web, port `http` -> targetPort `http`.
fn web() -> Service {
    svc(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"tier": "front"}},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
}

fn with_spec(mut s: Service, f: impl FnOnce(&mut serde_json::Value)) -> Service {
    let mut v = serde_json::to_value(&s).expect("json");
    f(&mut v["spec"]);
    s = serde_json::from_value(v).expect("service");
    s
}

/// A running pod of app=web with `ip`, Ready or not, declaring `ports` (name, port, proto).
fn pod(name: &str, ip: &str, ready: bool, ports: &[(&str, u16, &str)]) -> Pod {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    }))
    .expect("pod")
}

fn http(name: &str, ip: &str) -> Pod {
    pod(name, ip, true, &[("http", 8080, "TCP")])
}

fn edit(p: Pod, f: impl FnOnce(&mut serde_json::Value)) -> Pod {
    let mut v = serde_json::to_value(&p).expect("json");
    f(&mut v);
    serde_json::from_value(v).expect("pod")
}

fn slices(services: &[Service], pods: &[Pod]) -> Vec<EndpointSlice> {
    desired_slices(services, pods, &BTreeMap::new())
}

fn addrs(s: &EndpointSlice) -> Vec<&str> {
    s.endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect()
}

fn port_numbers(s: &EndpointSlice) -> Vec<(String, String, u16)> {
    s.ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_slice_carries_the_pods_the_selector_picks_with_kubes_labels_and_owner() {
    let out = slices(
        &[web()],
        &[http("web-b", "10.244.0.6"), http("web-a", "10.244.0.5")],
    );
    assert_eq!(out.len(), 1);
    let s = &out[0];
    assert!(
        s.metadata.name.starts_with("web-") && s.metadata.name.len() == 9,
        "{}",
        s.metadata.name
    );
    assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(
        s.metadata.labels,
        BTreeMap::from([
            ("kubernetes.io/service-name".to_string(), "web".to_string()),
            (
                "endpointslice.kubernetes.io/managed-by".to_string(),
                "endpointslice-controller.k8s.io".to_string()
            ),
            ("tier".to_string(), "front".to_string()),
        ])
    );
    assert_eq!(
        s.metadata.extra["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true}])
    );
    // sorted by pod name
    assert_eq!(addrs(s), vec!["10.244.0.5", "10.244.0.6"]);
    assert_eq!(port_numbers(s), vec![("http".into(), "TCP".into(), 8080)]);
    let e = serde_json::to_value(&s.endpoints[0]).expect("json");
    assert_eq!(
        e,
        json!({"addresses": ["10.244.0.5"],
               "conditions": {"ready": true, "serving": true, "terminating": false},
               "nodeName": "node1",
               "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-a", "uid": "uid-web-a"}})
    );
    assert!(is_managed(s));
}

#[test]
fn named_target_ports_resolve_per_pod_and_by_protocol() {
    let pods = [
        pod("a", "10.244.0.1", true, &[("http", 8080, "TCP")]),
        pod("b", "10.244.0.2", true, &[("http", 9090, "TCP")]),
        // declares `http` only for UDP: the TCP service port does not resolve
        pod("c", "10.244.0.3", true, &[("http", 8080, "UDP")]),
        pod("d", "10.244.0.4", true, &[("http", 8080, "TCP")]),
    ];
    let out = slices(&[web()], &pods);
    let find = |port: u16| {
        out.iter()
            .find(|s| port_numbers(s).iter().any(|p| p.2 == port))
            .map(addrs)
            .unwrap_or_default()
    };
    assert_eq!(find(8080), vec!["10.244.0.1", "10.244.0.4"]);
    assert_eq!(find(9090), vec!["10.244.0.2"]);
    // c is in a slice without ports (kube does the same), never in one with a port
    let c_slices: Vec<&EndpointSlice> = out
        .iter()
        .filter(|s| addrs(s).contains(&"10.244.0.3"))
        .collect();
    assert_eq!(c_slices.len(), 1);
    assert!(c_slices[0].ports.is_empty());
    // UDP service port resolves c only
    let udp = with_spec(web(), |s| s["ports"][0]["protocol"] = json!("UDP"));
    let out = slices(&[udp], &pods);
    let with_port: Vec<&EndpointSlice> = out.iter().filter(|s| !s.ports.is_empty()).collect();
    assert_eq!(with_port.len(), 1);
    assert_eq!(addrs(with_port[0]), vec!["10.244.0.3"]);
    assert_eq!(
        port_numbers(with_port[0]),
        vec![("http".into(), "UDP".into(), 8080)]
    );
}

#[test]
fn a_pod_lacking_one_named_port_is_left_out_of_that_port_only() {
    let two = with_spec(web(), |s| {
        s["ports"] = json!([{"name": "http", "port": 80, "targetPort": "http"},
                            {"name": "metrics", "port": 9100}]);
    });
    let out = slices(
        &[two],
        &[http("a", "10.244.0.1"), pod("b", "10.244.0.2", true, &[])],
    );
    assert_eq!(out.len(), 2);
    let full = out.iter().find(|s| s.ports.len() == 2).expect("both ports");
    assert_eq!(addrs(full), vec!["10.244.0.1"]);
    assert_eq!(
        port_numbers(full),
        vec![
            ("http".into(), "TCP".into(), 8080),
            ("metrics".into(), "TCP".into(), 9100)
        ]
    );
    let metrics = out
        .iter()
        .find(|s| s.ports.len() == 1)
        .expect("metrics only");
    assert_eq!(addrs(metrics), vec!["10.244.0.2"]);
    assert_eq!(
        port_numbers(metrics),
        vec![("metrics".into(), "TCP".into(), 9100)]
    );
}

#[test]
fn sidecar_init_containers_ports_count_for_named_ports() {
    let p = edit(pod("a", "10.244.0.1", true, &[]), |v| {
        v["spec"]["initContainers"] = json!([
            {"name": "proxy", "restartPolicy": "Always", "ports": [{"name": "http", "containerPort": 15001}]},
            {"name": "setup", "ports": [{"name": "http", "containerPort": 1}]}
        ]);
    });
    let out = slices(&[web()], &[p]);
    assert_eq!(
        port_numbers(&out[0]),
        vec![("http".into(), "TCP".into(), 15001)]
    );
}

#[test]
fn numeric_and_defaulted_target_ports_stay_numbers_and_unnamed_ports_get_an_empty_name() {
    let s = with_spec(web(), |s| s["ports"] = json!([{"port": 80}]));
    let out = slices(&[s], &[http("a", "10.244.0.1")]);
    assert_eq!(port_numbers(&out[0]), vec![("".into(), "TCP".into(), 80)]);
    let s = with_spec(web(), |s| {
        s["ports"] = json!([{"port": 80, "targetPort": 8080, "appProtocol": "http"}])
    });
    let out = slices(&[s], &[http("a", "10.244.0.1")]);
    assert_eq!(port_numbers(&out[0]), vec![("".into(), "TCP".into(), 8080)]);
    assert_eq!(out[0].ports[0].app_protocol.as_deref(), Some("http"));
}

fn conditions(s: &EndpointSlice) -> Vec<(bool, bool, bool)> {
    s.endpoints
        .iter()
        .map(|e| {
            (
                e.conditions.ready.unwrap_or(false),
                e.conditions.serving.unwrap_or(false),
                e.conditions.terminating.unwrap_or(false),
            )
        })
        .collect()
}

fn terminating(p: Pod) -> Pod {
    edit(p, |v| {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    })
}

#[test]
fn conditions_follow_readiness_and_termination() {
    let pods = [
        http("a-ready", "10.244.0.1"),
        pod("b-unready", "10.244.0.2", false, &[("http", 8080, "TCP")]),
        terminating(http("c-terminating", "10.244.0.3")),
        terminating(pod(
            "d-term-unready",
            "10.244.0.4",
            false,
            &[("http", 8080, "TCP")],
        )),
    ];
    let out = slices(&[web()], &pods);
    assert_eq!(
        conditions(&out[0]),
        vec![
            (true, true, false),
            (false, false, false),
            (false, true, true),
            (false, false, true)
        ]
    );
    // publishNotReadyAddresses: ready and serving for all, terminating still said
    let publish = with_spec(web(), |s| s["publishNotReadyAddresses"] = json!(true));
    let out = slices(&[publish], &pods);
    assert_eq!(
        conditions(&out[0]),
        vec![
            (true, true, false),
            (true, true, false),
            (true, true, true),
            (true, true, true)
        ]
    );
}

#[test]
fn pods_without_ip_finished_elsewhere_or_unmatched_are_left_out() {
    let pods = [
        http("ok", "10.244.0.1"),
        edit(http("no-ip", "10.244.0.2"), |v| {
            v["status"].as_object_mut().map(|m| {
                m.remove("podIP");
                m.remove("podIPs")
            });
        }),
        edit(http("done", "10.244.0.3"), |v| {
            v["status"]["phase"] = json!("Succeeded")
        }),
        edit(http("failed", "10.244.0.4"), |v| {
            v["status"]["phase"] = json!("Failed")
        }),
        edit(http("other-ns", "10.244.0.5"), |v| {
            v["metadata"]["namespace"] = json!("other")
        }),
        edit(http("other-app", "10.244.0.6"), |v| {
            v["metadata"]["labels"]["app"] = json!("db")
        }),
        edit(http("no-labels", "10.244.0.7"), |v| {
            v["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }),
        edit(http("v6", "fd00::1"), |v| {
            v["status"]["podIP"] = json!("fd00::1");
            v["status"]["podIPs"] = json!([{"ip": "fd00::1"}]);
        }),
        edit(http("pending-with-ip", "10.244.0.8"), |v| {
            v["status"]["phase"] = json!("Pending")
        }),
    ];
    let out = slices(&[web()], &pods);
    assert_eq!(out.len(), 1);
    assert_eq!(addrs(&out[0]), vec!["10.244.0.1", "10.244.0.8"]);
}

#[test]
fn more_than_a_hundred_endpoints_are_split_into_slices_with_stable_names() {
    let pods: Vec<Pod> = (0..250)
        .map(|i| {
            http(
                &format!("web-{i:03}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 1),
            )
        })
        .collect();
    let out = slices(&[web()], &pods);
    let sizes: Vec<usize> = out.iter().map(|s| s.endpoints.len()).collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![50, 100, 100]);
    let names: BTreeSet<&str> = out.iter().map(|s| s.metadata.name.as_str()).collect();
    assert_eq!(names.len(), 3);
    let all: BTreeSet<&str> = out.iter().flat_map(addrs).collect();
    assert_eq!(all.len(), 250);
    // the same input gives the same names; so does adding one more pod (the port set stays)
    let again = slices(&[web()], &pods);
    assert_eq!(again, out);
    let mut more = pods.clone();
    more.push(http("web-999", "10.244.9.9"));
    let grown: BTreeSet<String> = slices(&[web()], &more)
        .into_iter()
        .map(|s| s.metadata.name)
        .collect();
    assert_eq!(grown, names.iter().map(|s| s.to_string()).collect());
}

#[test]
fn the_name_stays_while_pods_come_and_go_and_a_service_without_pods_gets_a_placeholder() {
    let one = slices(&[web()], &[http("a", "10.244.0.1")]);
    let two = slices(
        &[web()],
        &[http("a", "10.244.0.1"), http("b", "10.244.0.2")],
    );
    assert_eq!(one[0].metadata.name, two[0].metadata.name);
    let none = slices(&[web()], &[]);
    assert_eq!(none.len(), 1, "kube's placeholder");
    assert!(none[0].endpoints.is_empty() && none[0].ports.is_empty());
    assert!(none[0].metadata.name.starts_with("web-"));
    // stored form: endpoints is an empty list, not absent
    let v = to_stored(&none[0], None, "u", "2026-01-01T00:00:00Z");
    assert_eq!(v["endpoints"], json!([]));
    assert_eq!(v["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(v["kind"], "EndpointSlice");
    assert_eq!(v["metadata"]["uid"], "u");
}

#[test]
fn selector_changes_pick_other_pods() {
    let pods = [
        http("a", "10.244.0.1"),
        edit(http("db", "10.244.0.2"), |v| {
            v["metadata"]["labels"] = json!({"app": "db", "tier": "x"})
        }),
    ];
    let out = slices(&[web()], &pods);
    assert_eq!(addrs(&out[0]), vec!["10.244.0.1"]);
    let db = with_spec(web(), |s| s["selector"] = json!({"app": "db"}));
    let out = slices(&[db], &pods);
    assert_eq!(addrs(&out[0]), vec!["10.244.0.2"]);
    // every selector entry must match
    let both = with_spec(web(), |s| s["selector"] = json!({"app": "db", "tier": "y"}));
    let out = slices(&[both], &pods);
    assert!(out[0].endpoints.is_empty());
}

#[test]
fn services_without_selector_and_external_name_get_none_headless_do() {
    let pods = [http("a", "10.244.0.1")];
    let no_selector = with_spec(web(), |s| {
        s.as_object_mut().map(|m| m.remove("selector"));
    });
    assert!(slices(&[no_selector], &pods).is_empty());
    let empty_selector = with_spec(web(), |s| s["selector"] = json!({}));
    assert!(slices(&[empty_selector], &pods).is_empty());
    let external = with_spec(web(), |s| {
        s["type"] = json!("ExternalName");
        s["externalName"] = json!("db.example.test");
    });
    assert!(slices(&[external], &pods).is_empty());
    let headless = with_spec(web(), |s| s["clusterIP"] = json!("None"));
    let out = slices(&[headless], &pods);
    assert_eq!(addrs(&out[0]), vec!["10.244.0.1"]);
    assert_eq!(
        out[0]
            .metadata
            .labels
            .get(LABEL_HEADLESS)
            .map(String::as_str),
        Some("")
    );
    // headless without ports: endpoints in a slice without ports
    let bare = with_spec(web(), |s| {
        s["clusterIP"] = json!("None");
        s["ports"] = json!([]);
    });
    let out = slices(&[bare], &pods);
    assert_eq!(addrs(&out[0]), vec!["10.244.0.1"]);
    assert!(out[0].ports.is_empty());
}

#[test]
fn hostname_only_for_pods_in_the_services_subdomain_and_zone_from_the_node() {
    let sub = |p: Pod, sub: &str| {
        edit(p, |v| {
            v["spec"]["hostname"] = json!("host-a");
            v["spec"]["subdomain"] = json!(sub);
        })
    };
    let pods = [
        sub(http("a", "10.244.0.1"), "web"),
        sub(http("b", "10.244.0.2"), "other"),
    ];
    let zones = BTreeMap::from([("node1".to_string(), "zone-a".to_string())]);
    let out = desired_slices(&[web()], &pods, &zones);
    assert_eq!(out[0].endpoints[0].hostname.as_deref(), Some("host-a"));
    assert_eq!(out[0].endpoints[1].hostname, None);
    assert_eq!(out[0].endpoints[0].zone.as_deref(), Some("zone-a"));
    assert_eq!(slices(&[web()], &pods)[0].endpoints[0].zone, None);
}

#[test]
fn several_services_and_namespaces_are_kept_apart() {
    let other_ns = edit(http("a", "10.244.1.1"), |v| {
        v["metadata"]["namespace"] = json!("x")
    });
    let svc_x = svc(json!({"metadata": {"name": "web", "namespace": "x"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}));
    let out = slices(&[web(), svc_x], &[http("a", "10.244.0.1"), other_ns]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].metadata.namespace.as_deref(), Some("default"));
    assert_eq!(addrs(&out[0]), vec!["10.244.0.1"]);
    assert_eq!(out[1].metadata.namespace.as_deref(), Some("x"));
    assert_eq!(addrs(&out[1]), vec!["10.244.1.1"]);
    assert_ne!(
        out[0].metadata.name, out[1].metadata.name,
        "names differ across namespaces"
    );
}

#[test]
fn same_content_ignores_identity_fields_and_to_stored_keeps_them() {
    let d = slices(&[web()], &[http("a", "10.244.0.1")]).remove(0);
    let v = to_stored(&d, None, "uid-1", "2026-01-01T00:00:00Z");
    let stored: EndpointSlice = serde_json::from_value(v).expect("slice");
    assert!(same_content(&stored, &d));
    let mut changed = d.clone();
    changed.endpoints[0].conditions.ready = Some(false);
    assert!(!same_content(&stored, &changed));
    let rewritten = to_stored(&changed, Some(&stored), "uid-2", "2027-01-01T00:00:00Z");
    assert_eq!(rewritten["metadata"]["uid"], "uid-1");
    assert_eq!(
        rewritten["metadata"]["creationTimestamp"],
        "2026-01-01T00:00:00Z"
    );
}

fn arb_pod() -> impl Strategy<Value = (u8, bool, bool, u8, u8, bool)> {
    // (label choice, ready, has ip, phase choice, port decl choice, terminating)
    (
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        0u8..4,
        any::<bool>(),
    )
}

proptest! {
    /// Every eligible selected pod is in exactly one slice of its port set, no slice holds
    /// more than 100, each slice's ports resolve for each of its pods, and the result does
    /// not depend on the order of the inputs.
    #[test]
    fn desired_slices_invariants(specs in prop::collection::vec(arb_pod(), 0..260), rotate in 0usize..50) {
        let two_ports = with_spec(web(), |s| {
            s["ports"] = json!([{"name": "http", "port": 80, "targetPort": "http"},
                                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]);
        });
        let pods: Vec<Pod> = specs
            .iter()
            .enumerate()
            .map(|(i, (label, ready, has_ip, phase, decl, term))| {
                let decls: &[(&str, u16, &str)] = match decl {
                    0 => &[],
                    1 => &[("http", 8080, "TCP")],
                    2 => &[("http", 9090, "TCP"), ("dns", 5353, "UDP")],
                    _ => &[("dns", 5353, "TCP")],
                };
                let mut p = pod(&format!("p{i:03}"), &format!("10.244.{}.{}", i / 200, i % 200 + 1), *ready, decls);
                p = edit(p, |v| {
                    v["metadata"]["labels"]["app"] = json!(["web", "db", "web"][*label as usize]);
                    v["status"]["phase"] = json!(["Running", "Pending", "Succeeded", "Failed"][*phase as usize]);
                    if !has_ip {
                        v["status"].as_object_mut().map(|m| { m.remove("podIP"); m.remove("podIPs") });
                    }
                    if *term {
                        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    }
                });
                p
            })
            .collect();
        let out = slices(std::slice::from_ref(&two_ports), &pods);
        let mut seen = BTreeMap::new();
        for s in &out {
            prop_assert!(s.endpoints.len() <= MAX_ENDPOINTS_PER_SLICE);
            for e in &s.endpoints {
                let name = e.target_ref.as_ref().and_then(|t| t.name.clone()).expect("targetRef");
                prop_assert!(seen.insert(name.clone(), s.metadata.name.clone()).is_none(), "{} twice", name);
                let p = pods.iter().find(|p| p.metadata.name == name).expect("a pod");
                let want: Vec<EndpointPort> = two_ports.spec.ports.iter().filter_map(|sp| resolve_port(sp, p)).collect();
                prop_assert_eq!(&want, &s.ports);
                prop_assert_eq!(e.conditions.ready, Some(pod_ready(p) && !p.metadata.is_being_deleted()));
            }
        }
        let eligible = pods
            .iter()
            .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("web") && in_endpoints(p))
            .count();
        prop_assert_eq!(seen.len(), eligible);
        let mut rotated = pods.clone();
        rotated.rotate_left(rotate % pods.len().max(1));
        prop_assert_eq!(slices(std::slice::from_ref(&two_ports), &rotated), out);
    }
}
