//! Tier 1: NetworkPolicy enforced by the kernel. One node namespace with pods wired as
//! flatnet-cni wires them and a second node on the underlay (an address outside the pod
//! network); policies are compiled, applied through `NetnsPolicy` (first a full load, then
//! only differences) and checked with real TCP connections: default deny, the node reaching
//! its own pods, a pod selector with a named port, an ipBlock with except, egress with a
//! named port, reply traffic. Needs root, `ip` and `nft`; prints SKIPPED otherwise, unless
//! REQUIRE_NETNS=1 (then it fails).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::time::Duration;

use model::NetworkPolicy;
use netpol::{
    Applier, Cluster, NamedPort, NamespaceInfo, NetnsPolicy, PodInfo, Protocol, compile_node,
};
use serde_json::{Value, json};
use testkit::{TestNs, ask, ask_within, name_server, pod, two_nodes};

const NET: u8 = 73;

fn info(name: &str, ip: &str, app: &str, node: &str) -> PodInfo {
    let mut p = PodInfo::new(
        "default",
        name,
        BTreeMap::from([("app".to_string(), app.to_string())]),
    );
    p.ip = Some(ip.parse().unwrap());
    p.node = Some(node.to_string());
    p.ports.push(NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    });
    p
}

fn policy(name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )
    .unwrap()
}

/// Blocked: the connection attempt times out (packets are dropped).
fn blocked(from: &TestNs, addr: &str) -> bool {
    ask_within(from, addr, Duration::from_millis(400)) == Err(std::io::ErrorKind::TimedOut)
}

fn allowed(from: &TestNs, addr: &str, name: &str) -> bool {
    ask(from, addr).as_deref() == Ok(name)
}

struct Setup {
    pods: Vec<PodInfo>,
    dp: NetnsPolicy,
    applier: Applier,
}

impl Setup {
    /// Compiles `policies` and makes the node's table hold what they say; the element changes.
    fn enforce(&mut self, policies: &[NetworkPolicy]) -> usize {
        let cluster = Cluster::new(
            vec![NamespaceInfo::new("default", BTreeMap::new())],
            self.pods.clone(),
            policies.to_vec(),
        )
        .unwrap();
        let plan = compile_node(&cluster.compile(), "a");
        self.applier.apply(&mut self.dp, plan).unwrap()
    }
}

#[test]
fn policies_are_enforced_on_real_connections() {
    let Some(nodes) = two_nodes(NET) else { return };
    let node = &nodes.a;
    let outside = &nodes.b;
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    outside.ip(&[
        "route",
        "add",
        "10.244.0.0/24",
        "via",
        &format!("10.99.{NET}.1"),
    ]);
    let web = pod(node, "10.244.0.7", "vweb");
    let client = pod(node, "10.244.0.5", "vclient");
    let other = pod(node, "10.244.0.6", "vother");
    let _stops = [
        name_server(&web, 8080, "web"),
        name_server(&client, 8080, "client"),
        name_server(&other, 8080, "other"),
        name_server(outside, 8080, "outside"),
    ];
    let web_addr = "10.244.0.7:8080";
    let mut s = Setup {
        pods: vec![
            info("web", "10.244.0.7", "web", "a"),
            info("client", "10.244.0.5", "client", "a"),
            info("other", "10.244.0.6", "other", "a"),
        ],
        dp: NetnsPolicy::open(Some(&node.path())).unwrap(),
        applier: Applier::default(),
    };

    // No policy: the table is there, every set empty, everything flows.
    assert_eq!(s.enforce(&[]), 0);
    let table = node.exec_ok(&["nft", "list", "table", "inet", "flatnet-policy"]);
    assert!(table, "the policy table exists");
    assert!(allowed(&client, web_addr, "web"));
    assert!(allowed(&other, web_addr, "web"));
    assert!(allowed(outside, web_addr, "web"));

    // Default deny for web: pods and the other node are refused; web's own node is not.
    let deny = policy(
        "deny",
        json!({"podSelector": {"matchLabels": {"app": "web"}}}),
    );
    assert!(s.enforce(std::slice::from_ref(&deny)) > 0);
    assert!(blocked(&client, web_addr));
    assert!(blocked(outside, web_addr));
    assert!(
        allowed(node, web_addr, "web"),
        "the node reaches its own pods"
    );
    // Replies of web's own connections still come back (conntrack).
    assert!(allowed(&web, "10.244.0.5:8080", "client"));

    // Allow app=client on the named port: client gets through, other does not.
    let from_clients = policy(
        "from-clients",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                            "ports": [{"port": "http"}]}]}),
    );
    let changes = s.enforce(&[deny.clone(), from_clients.clone()]);
    assert_eq!(changes, 1, "one element more");
    assert!(allowed(&client, web_addr, "web"));
    assert!(blocked(&other, web_addr));

    // An ipBlock with an except: the underlay /24 minus the other node.
    let block = |except: &str| {
        policy(
            "from-underlay",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": format!("10.99.{NET}.0/24"),
                                                      "except": [except]}}]}]}),
        )
    };
    s.enforce(&[
        deny.clone(),
        from_clients.clone(),
        block(&format!("10.99.{NET}.3/32")),
    ]);
    assert!(allowed(outside, web_addr, "web"));
    s.enforce(&[
        deny.clone(),
        from_clients.clone(),
        block(&format!("10.99.{NET}.2/32")),
    ]);
    assert!(blocked(outside, web_addr));
    assert!(
        allowed(&client, web_addr, "web"),
        "the other policies still apply"
    );

    // Egress for client: only web's named port. Other pods and the outside are refused; web
    // still answers (its ingress allows client).
    let client_egress = policy(
        "client-egress",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                           "ports": [{"port": "http"}]}]}),
    );
    let all = [deny, from_clients, client_egress];
    s.enforce(&all);
    assert!(allowed(&client, web_addr, "web"));
    assert!(blocked(&client, "10.244.0.6:8080"));
    assert!(blocked(&client, &format!("10.99.{NET}.2:8080")));
    // Egress to the node itself is checked too (input hook).
    let _node_server = name_server(node, 8081, "node");
    assert!(blocked(&client, &format!("10.99.{NET}.1:8081")));
    assert!(allowed(&other, &format!("10.99.{NET}.1:8081"), "node"));
    // Ingress of client is not isolated: others reach it.
    assert!(allowed(&other, "10.244.0.5:8080", "client"));

    // A restarted agent (fresh applier and socket) reloads the same sets in one go.
    let mut fresh = Setup {
        pods: s.pods.clone(),
        dp: NetnsPolicy::open(Some(&node.path())).unwrap(),
        applier: Applier::default(),
    };
    assert!(fresh.enforce(&all) > 0);
    assert!(allowed(&client, web_addr, "web"));
    assert!(blocked(&other, web_addr));

    // All policies gone: everything flows again.
    assert!(fresh.enforce(&[]) > 0);
    assert!(allowed(&other, web_addr, "web"));
    assert!(allowed(&client, "10.244.0.6:8080", "other"));
}
