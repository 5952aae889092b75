//! Tier 1: the service proxy against real kernels: [`services::Applier`] loading
//! [`services::NetnsProxy`] in a node namespace, checked with real TCP connections through
//! ClusterIPs and NodePorts, and [`services::health_server`] answering over real sockets. Each
//! test has network namespaces of its own (two "nodes" joined by a veth underlay, pods behind
//! them), removed on every path. Needs root, `ip` and `nft`; prints SKIPPED otherwise, unless
//! REQUIRE_NETNS=1 (then it fails). The whole agent serving its health ports is tested in
//! `agent/tests/netns.rs`.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use testkit::{TempDir, TestNs, ask, http_get, name_server, pod, tcp_server, two_nodes, within};

fn web_service(endpoints: &[&str]) -> (Vec<model::Service>, Vec<model::EndpointSlice>) {
    let svc = serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    let empty = serde_json::json!({"metadata": {"name": "empty", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.21", "selector": {"app": "none"},
                 "ports": [{"name": "http", "port": 80}]}});
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "a"}))
        .collect();
    let slice = serde_json::json!({"metadata": {"name": "web-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    (
        vec![
            serde_json::from_value(svc).unwrap(),
            serde_json::from_value(empty).unwrap(),
        ],
        vec![serde_json::from_value(slice).unwrap()],
    )
}

#[test]
fn service_maps_dnat_real_connections_and_survive_a_restart() {
    use services::{Applier, Compiler, NodeView};
    let feed = |c: &mut Compiler,
                (svcs, slices): (Vec<model::Service>, Vec<model::EndpointSlice>)| {
        svcs.iter().for_each(|s| c.upsert_service(s));
        slices.iter().for_each(|s| c.upsert_slice(s));
    };
    let Some(nodes) = two_nodes(71) else { return };
    let node = &nodes.a;
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    let client = pod(node, "10.244.0.5", "vc");
    let s1 = pod(node, "10.244.0.6", "vs1");
    let s2 = pod(node, "10.244.0.7", "vs2");
    let stops = [name_server(&s1, 8080, "s1"), name_server(&s2, 8080, "s2")];
    let view = NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 71, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    };
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    let mut applier = Applier::default();
    let mut c = Compiler::new(view.clone());
    feed(&mut c, web_service(&["10.244.0.6", "10.244.0.7"]));
    applier.apply(&mut dp, &mut c).unwrap();

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(ask(&client, "10.96.0.20:80").unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["s1", "s2"]);
    assert_eq!(
        ask(&client, "10.96.0.21:80"),
        Err(std::io::ErrorKind::ConnectionRefused),
        "no endpoints: refused at once"
    );
    assert_eq!(
        ask(&client, "10.96.0.20:81"),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a port the service lacks: refused"
    );

    // A restarted agent (a new Applier, the table still there) reloads without error, and a
    // change afterwards touches only its elements.
    let mut applier = Applier::default();
    let mut c = Compiler::new(view.clone());
    feed(&mut c, web_service(&["10.244.0.7"]));
    applier.apply(&mut dp, &mut c).unwrap();
    for _ in 0..10 {
        assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s2");
    }
    feed(&mut c, web_service(&["10.244.0.6"]));
    applier.apply(&mut dp, &mut c).unwrap();
    for _ in 0..10 {
        assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s1");
    }
    let listed = Command::new("nsenter")
        .args([
            &format!("--net={}", node.path().display()),
            "nft",
            "-j",
            "list",
            "map",
            "inet",
            "flatnet",
            "backends",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("10.244.0.6") && !text.contains("10.244.0.7"),
        "{text}"
    );
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
}

fn lb_local_service(
    health_port: u16,
    endpoints: &[(&str, bool)],
) -> (model::Service, model::EndpointSlice) {
    let svc = serde_json::json!({"metadata": {"name": "shop", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "selector": {"app": "shop"},
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": health_port,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}});
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| {
            serde_json::json!({"addresses": [ip], "nodeName": "a",
            "conditions": {"ready": ready, "serving": true, "terminating": !ready}})
        })
        .collect();
    let slice = serde_json::json!({"metadata": {"name": "shop-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "shop"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    (
        serde_json::from_value(svc).unwrap(),
        serde_json::from_value(slice).unwrap(),
    )
}

/// The health servers in a node namespace, probed from the other node over the underlay with
/// the service table loaded (nothing in it intercepts the ports): the health-check node port
/// answers 200 with the local endpoint count, 503 once the node's last endpoint terminates,
/// closes when the service goes; `/healthz` answers 200 while synced and 503 when an update
/// waits too long.
#[test]
fn health_ports_answer_over_real_sockets() {
    use services::{Applier, Compiler, NodeView};
    use services::{HealthConfig, ProxyHealth};
    let Some(nodes) = two_nodes(72) else { return };
    let (node, probe) = (&nodes.a, &nodes.b);
    let view = NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 72, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    };
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    let mut applier = Applier::default();
    let mut c = Compiler::new(view);
    let health = ProxyHealth::default();
    let mut sync =
        |c: &mut Compiler, svc: Option<&model::Service>, slice: &model::EndpointSlice| {
            match svc {
                Some(s) => c.upsert_service(s),
                None => c.remove_service("default", "shop"),
            }
            c.upsert_slice(slice);
            health.queued();
            applier.apply(&mut dp, c).unwrap();
            health.set_services(&c.plan().health_checks);
            health.updated();
        };
    let (svc, slice) = lb_local_service(32100, &[("10.244.0.6", true), ("10.244.0.7", true)]);
    sync(&mut c, Some(&svc), &slice);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = HealthConfig {
        healthz_bind: Some("0.0.0.0:10256".parse().unwrap()),
        node_ports: true,
        timeout: Duration::from_millis(300),
    };
    let server = rt.spawn(services::health_server::serve(
        cfg,
        Some(node.path()),
        health.clone(),
    ));

    let port = "10.99.72.1:32100";
    within(
        "the health check node port to open",
        Duration::from_secs(5),
        || http_get(probe, port, "/").is_ok(),
    );
    let (status, text) = http_get(probe, port, "/").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\r\nContent-Type: application/json\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nX-Load-Balancing-Endpoint-Weight: 2\r\n"),
        "{text}"
    );
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"service": {"namespace": "default", "name": "shop"},
            "localEndpoints": 2, "serviceProxyHealthy": true})
    );

    // Both local endpoints start terminating: the node fails the check at once.
    let (svc, slice) = lb_local_service(32100, &[("10.244.0.6", false), ("10.244.0.7", false)]);
    sync(&mut c, Some(&svc), &slice);
    let took = within(
        "503 after the last ready endpoint went",
        Duration::from_secs(1),
        || {
            http_get(probe, port, "/")
                .is_ok_and(|(s, t)| s == 503 && t.contains("\"localEndpoints\": 0"))
        },
    );
    eprintln!("health check followed the change in {took:?}");

    // The node health server: synced, then an update that waits longer than the timeout.
    let healthz = "10.99.72.1:10256";
    within("/healthz to open", Duration::from_secs(5), || {
        http_get(probe, healthz, "/healthz").is_ok()
    });
    let (status, text) = http_get(probe, healthz, "/healthz").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"nodeEligible\": true}"), "{text}");
    assert_eq!(http_get(probe, healthz, "/livez").unwrap().0, 200);
    assert_eq!(http_get(probe, healthz, "/other").unwrap().0, 404);
    health.queued();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(http_get(probe, healthz, "/healthz").unwrap().0, 503);
    assert_eq!(
        http_get(probe, port, "/").unwrap().0,
        503,
        "an unhealthy proxy fails every check"
    );
    health.updated();
    assert_eq!(http_get(probe, healthz, "/healthz").unwrap().0, 200);

    // The service goes: its port closes.
    sync(&mut c, None, &slice);
    within(
        "the health check node port to close",
        Duration::from_secs(1),
        || http_get(probe, port, "/") == Err(std::io::ErrorKind::ConnectionRefused),
    );
    server.abort();
    drop(rt);
}

/// Session affinity through a real kernel: a client that first reached endpoint E through the
/// ClusterIP gets E through the NodePort, and one that first came through the NodePort (the
/// masqueraded path) keeps its endpoint through the ClusterIP. The ruleset lists back as JSON
/// and as text that `nft` loads again.
#[test]
fn session_affinity_is_shared_by_the_cluster_ip_and_the_node_port() {
    use services::{Applier, Compiler, NodeView};
    let Some(nodes) = two_nodes(73) else { return };
    let (node, outside) = (&nodes.a, &nodes.b);
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    // The outside client reaches ClusterIPs through node a.
    outside.ip(&["route", "add", "10.96.0.0/16", "via", "10.99.73.1"]);
    outside.ip(&["route", "add", "10.244.0.0/16", "via", "10.99.73.1"]);
    let client = pod(node, "10.244.0.5", "vc");
    let s1 = pod(node, "10.244.0.6", "vs1");
    let s2 = pod(node, "10.244.0.7", "vs2");
    let stops = [name_server(&s1, 8080, "s1"), name_server(&s2, 8080, "s2")];
    let svc = serde_json::json!({"metadata": {"name": "sticky", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.30", "selector": {"app": "sticky"},
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}});
    let slice = serde_json::json!({"metadata": {"name": "sticky-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "sticky"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.6"], "nodeName": "a", "conditions": {"ready": true}},
                      {"addresses": ["10.244.0.7"], "nodeName": "a", "conditions": {"ready": true}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    let mut c = Compiler::new(NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 73, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    });
    c.upsert_service(&serde_json::from_value(svc).unwrap());
    c.upsert_slice(&serde_json::from_value(slice).unwrap());
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    Applier::default().apply(&mut dp, &mut c).unwrap();

    let (cluster_ip, node_port) = ("10.96.0.30:80", "10.99.73.1:30080");
    // The outside client: ClusterIP first (kept address), then the NodePort (masqueraded).
    let outside_first = ask(outside, cluster_ip).unwrap();
    for _ in 0..12 {
        assert_eq!(
            ask(outside, node_port).unwrap(),
            outside_first,
            "NodePort after ClusterIP"
        );
        assert_eq!(ask(outside, cluster_ip).unwrap(), outside_first);
    }
    // The pod client: NodePort first (the record is written with the masquerade bit set on
    // the flow), then the ClusterIP.
    let first = ask(&client, node_port).unwrap();
    for _ in 0..12 {
        assert_eq!(
            ask(&client, cluster_ip).unwrap(),
            first,
            "ClusterIP after NodePort"
        );
        assert_eq!(ask(&client, node_port).unwrap(), first);
    }
    // One record per client, keyed by the bare affinity id.
    let nft = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg("nft")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let records = nft(&["list", "map", "inet", "flatnet", "affinity"]);
    assert_eq!(records.matches("10.99.73.2 . ").count(), 1, "{records}");
    assert_eq!(records.matches("10.244.0.5 . ").count(), 1, "{records}");
    let id = c.plan().affinity_ids.values().next().copied().unwrap();
    assert!(
        records.contains(&format!("{id:#010x}")),
        "{id:#x} in {records}"
    );
    // Lists back: JSON that parses, text that nft loads again (checked, not applied).
    let json: Value = serde_json::from_str(&nft(&["-j", "list", "ruleset"])).unwrap();
    assert!(json["nftables"].as_array().is_some_and(|a| !a.is_empty()));
    let dir = TempDir::new("affinity-ruleset");
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, nft(&["list", "ruleset"])).unwrap();
    nft(&["-c", "-f", file.to_str().unwrap()]);
    // A restarted agent reloads over this table (reading its chains back) and the records
    // still hold.
    Applier::default().apply(&mut dp, &mut c).unwrap();
    assert_eq!(ask(outside, node_port).unwrap(), outside_first);
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
}

/// A TCP server in `ns` on `port` that echoes what each connection sends until it closes.
fn echo_server(ns: &TestNs, port: u16) -> Arc<AtomicBool> {
    tcp_server(ns, port, |mut s| {
        s.set_nonblocking(false).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    })
}

/// kube-proxy's terminating-endpoint rules in a real kernel: a connection established to an
/// endpoint keeps working when the endpoint starts terminating and after it leaves the slice
/// (TCP flows are never flushed), while new connections go to the ready endpoint; with no
/// ready endpoint left, new connections use the serving terminating one.
#[test]
fn established_connections_survive_their_endpoint_terminating() {
    use services::{Applier, Compiler, NodeView};
    let Some(nodes) = two_nodes(74) else { return };
    let node = &nodes.a;
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    let client = pod(node, "10.244.0.5", "vc");
    let s1 = pod(node, "10.244.0.6", "vs1");
    let s2 = pod(node, "10.244.0.7", "vs2");
    let stops = [echo_server(&s1, 8080), name_server(&s2, 8080, "s2")];
    let svc: model::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    // (address, ready, serving, terminating)
    let slice = |eps: &[(&str, bool, bool, bool)]| -> model::EndpointSlice {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, r, s, t)| {
                serde_json::json!({"addresses": [ip], "nodeName": "a",
                "conditions": {"ready": r, "serving": s, "terminating": t}})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}))
        .unwrap()
    };
    let mut c = Compiler::new(NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 74, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    });
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    let mut applier = Applier::default();
    c.upsert_service(&svc);
    c.upsert_slice(&slice(&[("10.244.0.6", true, true, false)]));
    applier.apply(&mut dp, &mut c).unwrap();

    let addr: std::net::SocketAddr = "10.96.0.20:80".parse().unwrap();
    let mut held = client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .unwrap();
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = |s: &mut TcpStream, msg: &str| {
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert_eq!(echo(&mut held, "one"), "one");

    // s1 terminates (still serving), s2 is ready: new flows go to s2, the held one goes on.
    c.upsert_slice(&slice(&[
        ("10.244.0.6", false, true, true),
        ("10.244.0.7", true, true, false),
    ]));
    applier.apply(&mut dp, &mut c).unwrap();
    for _ in 0..10 {
        assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s2");
    }
    assert_eq!(echo(&mut held, "two"), "two");
    // s1 leaves the slice: the held flow still goes on (TCP is never flushed).
    c.upsert_slice(&slice(&[("10.244.0.7", true, true, false)]));
    applier.apply(&mut dp, &mut c).unwrap();
    assert_eq!(echo(&mut held, "three"), "three");
    // Only a serving terminating endpoint left: new flows use it.
    c.upsert_slice(&slice(&[("10.244.0.7", false, true, true)]));
    applier.apply(&mut dp, &mut c).unwrap();
    assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s2");
    // Not serving any more: refused.
    c.upsert_slice(&slice(&[("10.244.0.7", false, false, true)]));
    applier.apply(&mut dp, &mut c).unwrap();
    assert_eq!(
        ask(&client, "10.96.0.20:80"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    drop(held);
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
}
