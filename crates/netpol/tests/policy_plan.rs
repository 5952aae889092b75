//! Tier 0: compiled policy -> the elements of each node's `inet flatnet-policy` table.
//!
//! - The sets, read the way the kernel's rules read them (one pass of the `forward` chain on
//!   the source's node for egress and on the destination's node for ingress), allow exactly
//!   the flows of every upstream NetworkPolicy e2e case (`plan/tests/netpol_cases/`), with the
//!   case's pods spread over two nodes.
//! - No two elements of an interval set overlap.
//! - The rendered table of a small cluster is a golden file (`UPDATE_GOLDEN=1` rewrites it).
//! - A one-policy change is a few element changes, and diff + apply give the full plan.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use model::NetworkPolicy;
use netpol::cases::{self, LabelTarget, NAMESPACES, PODS, PORTS};
use netpol::nft::{render_table, sets};
use netpol::{AllowRange, Applier, MemPolicy, PolicyPlan, compile_node, diff};
use netpol::{Cluster, CompiledPolicy, NamedPort, NamespaceInfo, PodInfo, Protocol};
use serde_json::{Value, json};

/// Whether `set` holds the point (pod, peer, proto, port).
fn holds(set: &BTreeSet<AllowRange>, pod: Ipv4Addr, peer: Ipv4Addr, proto: u8, port: u16) -> bool {
    let from = AllowRange {
        pod,
        peer: (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED),
        proto: (0, 0),
        port: (0, 0),
    };
    set.range(from..).take_while(|r| r.pod == pod).any(|r| {
        (r.peer.0..=r.peer.1).contains(&peer)
            && (r.proto.0..=r.proto.1).contains(&proto)
            && (r.port.0..=r.port.1).contains(&port)
    })
}

/// What the chains decide for a new connection from `src` to `dst` (both pods).
fn enforced(
    plans: &BTreeMap<String, PolicyPlan>,
    src: &PodInfo,
    dst: &PodInfo,
    proto: u8,
    port: u16,
) -> bool {
    let (s, d) = (src.ip.unwrap(), dst.ip.unwrap());
    if s == d {
        // Never leaves the pod's namespace.
        return true;
    }
    let sp = &plans[src.node.as_deref().unwrap()];
    if sp.egress_isolated.contains(&s) && !holds(&sp.egress_allow, s, d, proto, port) {
        return false;
    }
    let dp = &plans[dst.node.as_deref().unwrap()];
    if dp.ingress_isolated.contains(&d) && !holds(&dp.ingress_allow, d, s, proto, port) {
        return false;
    }
    true
}

fn assert_disjoint(plan: &PolicyPlan, node: &str) {
    for (name, set) in [
        (sets::INGRESS_ALLOW, &plan.ingress_allow),
        (sets::EGRESS_ALLOW, &plan.egress_allow),
    ] {
        let v: Vec<&AllowRange> = set.iter().collect();
        for (i, a) in v.iter().enumerate() {
            for b in v[i + 1..].iter().take_while(|b| b.pod == a.pod) {
                assert!(!a.overlaps(b), "{node} {name}: {a} overlaps {b}");
            }
        }
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The upstream model (9 pods in x, y, z serving 80 and 81 on every protocol), spread over
/// two nodes so that pods talk on one node and across nodes.
struct State {
    namespaces: Vec<NamespaceInfo>,
    pods: Vec<PodInfo>,
    policies: BTreeMap<String, NetworkPolicy>,
}

impl State {
    fn new() -> State {
        let mut namespaces = Vec::new();
        let mut pods = Vec::new();
        for (ni, ns) in NAMESPACES.into_iter().enumerate() {
            namespaces.push(NamespaceInfo::new(
                ns,
                BTreeMap::from([("ns".to_string(), ns.to_string())]),
            ));
            for (pi, name) in PODS.into_iter().enumerate() {
                let mut p = PodInfo::new(ns, name, BTreeMap::from([("pod".into(), name.into())]));
                let node = (ni * 3 + pi) % 2 + 1;
                p.ip = Some(Ipv4Addr::new(10, 244, node as u8, 10 + (ni * 3 + pi) as u8));
                p.node = Some(format!("n{node}"));
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in PORTS {
                        p.ports.push(NamedPort {
                            name: format!("serve-{port}-{}", protocol.as_str().to_lowercase()),
                            protocol,
                            port,
                        });
                    }
                }
                pods.push(p);
            }
        }
        State {
            namespaces,
            pods,
            policies: BTreeMap::new(),
        }
    }

    fn apply(&mut self, docs: &[Value], source: &str) -> Result<(), String> {
        let pods = self.pods.clone();
        let ip_of = |k: &str| pods.iter().find(|p| p.key() == k).and_then(|p| p.ip);
        let mut docs = docs.to_vec();
        for d in &mut docs {
            cases::substitute(d, &ip_of)?;
        }
        let text = docs
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for o in model::parse_manifests(&text, source).map_err(|e| e.to_string())? {
            let p: NetworkPolicy = o.typed().map_err(|e| e.to_string())?;
            self.policies.insert(o.display_name(), p);
        }
        Ok(())
    }

    fn change(&mut self, step: &cases::Step, source: &str) -> Result<(), String> {
        self.apply(&step.apply, source)?;
        for d in &step.delete {
            if d == "*" {
                self.policies.clear();
            } else if self.policies.remove(d).is_none() {
                return Err(format!("delete: no policy {d}"));
            }
        }
        for l in &step.label {
            let labels = match l.target()? {
                LabelTarget::Namespace(ns) => self
                    .namespaces
                    .iter_mut()
                    .find(|n| n.name == ns)
                    .map(|n| &mut n.labels),
                LabelTarget::Pod(ns, name) => self
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == ns && p.name == name)
                    .map(|p| &mut p.labels),
            }
            .ok_or_else(|| format!("label: no such object: {l:?}"))?;
            for (k, v) in l.changes()? {
                match v {
                    Some(v) => labels.insert(k, v),
                    None => labels.remove(&k),
                };
            }
        }
        Ok(())
    }

    fn compiled(&self) -> CompiledPolicy {
        Cluster::new(
            self.namespaces.clone(),
            self.pods.clone(),
            self.policies.values().cloned().collect(),
        )
        .unwrap()
        .compile()
    }

    fn plans(&self) -> BTreeMap<String, PolicyPlan> {
        let cp = self.compiled();
        ["n1", "n2"]
            .into_iter()
            .map(|n| (n.to_string(), compile_node(&cp, n)))
            .collect()
    }

    /// The matrix the sets enforce, in the case files' format.
    fn enforced_rows(
        &self,
        plans: &BTreeMap<String, PolicyPlan>,
        p: Protocol,
        port: u16,
    ) -> Vec<String> {
        self.pods
            .iter()
            .map(|s| {
                self.pods
                    .iter()
                    .map(|d| {
                        if enforced(plans, s, d, proto_number(p), port) {
                            'X'
                        } else {
                            '.'
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

fn run_case(path: &Path) -> Result<usize, String> {
    let case = cases::load(path)?;
    let source = path.display().to_string();
    let mut state = State::new();
    state.apply(&case.policies, &source)?;
    let mut failures = Vec::new();
    let mut probes = 0;
    for (si, step) in case.steps.iter().enumerate() {
        state.change(step, &source)?;
        let plans = state.plans();
        for (node, plan) in &plans {
            assert_disjoint(plan, node);
        }
        for probe in &step.probes {
            probes += 1;
            let protocol: Protocol = probe.protocol.parse().map_err(|e| format!("{e}"))?;
            let actual = state.enforced_rows(&plans, protocol, probe.port);
            if actual != probe.expect {
                failures.push(format!(
                    "{}: step {si}, {}/{}: the nft sets disagree\n{}",
                    case.name,
                    probe.protocol,
                    probe.port,
                    cases::diff_table(("expected", &probe.expect), ("enforced", &actual))
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(probes)
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn the_sets_enforce_every_upstream_case() {
    let files = cases::case_files().unwrap();
    assert!(files.len() >= 51, "found {} case files", files.len());
    let mut errors = Vec::new();
    let mut probes = 0;
    for f in &files {
        match run_case(f) {
            Ok(n) => probes += n,
            Err(e) => errors.push(format!("{}:\n{e}", f.display())),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(probes >= 60, "only {probes} probes checked");
}

fn ns(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}})
}

/// A pod; `ip` empty: no address yet (no `status`).
fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value, ports: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]}});
    if !ip.is_empty() {
        p["status"] = json!({"podIP": ip});
    }
    p
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A small cluster with one of each kind of rule: default deny, a pod selector, a namespace
/// selector, an ipBlock with except, a named port, a port range, egress.
fn small_cluster() -> Vec<Value> {
    let web_ports = json!([{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]);
    vec![
        ns("prod", json!({"env": "prod"})),
        ns("dev", json!({"env": "dev"})),
        pod(
            "prod",
            "web",
            "n1",
            "10.244.1.10",
            json!({"app": "web"}),
            web_ports.clone(),
        ),
        pod(
            "prod",
            "db",
            "n1",
            "10.244.1.11",
            json!({"app": "db"}),
            json!([{"name": "pg", "containerPort": 5432}]),
        ),
        pod(
            "prod",
            "api",
            "n2",
            "10.244.2.10",
            json!({"app": "api"}),
            web_ports,
        ),
        pod(
            "dev",
            "tool",
            "n2",
            "10.244.2.11",
            json!({"app": "tool"}),
            json!([]),
        ),
        pod(
            "dev",
            "pending",
            "n1",
            "",
            json!({"app": "tool"}),
            json!([]),
        ),
        policy(
            "prod",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
        policy(
            "prod",
            "web-from-api-and-dev",
            json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                 "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}],
                 "ports": [{"protocol": "UDP", "port": "dns"}]},
                {"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]}),
        ),
        policy(
            "prod",
            "db-from-web",
            json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                         "ports": [{"port": 5432}]}]}),
        ),
        policy(
            "prod",
            "web-egress",
            json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "pg"}]},
                       {"ports": [{"protocol": "UDP", "port": 53}]}]}),
        ),
    ]
}

fn compiled(objects: &[Value]) -> CompiledPolicy {
    let objects: Vec<model::Object> = objects
        .iter()
        .map(|v| model::Object::from_json(v.clone()).unwrap())
        .collect();
    Cluster::from_objects(&objects).unwrap().compile()
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn the_rendered_table_of_a_small_cluster_is_the_golden_file() {
    let cp = compiled(&small_cluster());
    let n1 = compile_node(&cp, "n1");
    // web and db are on n1 (the pending pod has no address yet); api and tool on n2.
    assert_eq!(n1.local_pods, 2);
    assert_disjoint(&n1, "n1");
    golden("policy_table_n1.nft", &render_table(&n1));
    let n2 = compile_node(&cp, "n2");
    assert_disjoint(&n2, "n2");
    golden("policy_table_n2.nft", &render_table(&n2));
}

#[test]
fn the_small_cluster_enforces_what_the_evaluator_says() {
    let cp = compiled(&small_cluster());
    let plans: BTreeMap<String, PolicyPlan> = ["n1", "n2"]
        .into_iter()
        .map(|n| (n.to_string(), compile_node(&cp, n)))
        .collect();
    let pods: Vec<&PodInfo> = cp.pods().iter().filter(|p| p.ip.is_some()).collect();
    let mut checked = 0;
    for s in &pods {
        for d in &pods {
            for (proto, port) in [
                (Protocol::Tcp, 8080),
                (Protocol::Tcp, 5432),
                (Protocol::Tcp, 9005),
                (Protocol::Tcp, 9011),
                (Protocol::Udp, 53),
                (Protocol::Udp, 8080),
                (Protocol::Sctp, 8080),
            ] {
                let flow = netpol::Flow {
                    src: netpol::Endpoint::Ip(s.ip.unwrap()),
                    dst: netpol::Endpoint::Ip(d.ip.unwrap()),
                    port,
                    protocol: proto,
                };
                let v = cp.verdict(&flow).unwrap();
                let got = enforced(&plans, s, d, proto_number(proto), port);
                assert_eq!(got, v.allowed, "{}", v.explain());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 4 * 7);
    // The ipBlock: ingress to web from 192.0.2.5 on any port, not from 192.0.2.200.
    let n1 = &plans["n1"];
    let web: Ipv4Addr = "10.244.1.10".parse().unwrap();
    assert!(holds(
        &n1.ingress_allow,
        web,
        "192.0.2.5".parse().unwrap(),
        6,
        1
    ));
    assert!(holds(
        &n1.ingress_allow,
        web,
        "192.0.2.5".parse().unwrap(),
        1,
        0
    ));
    assert!(!holds(
        &n1.ingress_allow,
        web,
        "192.0.2.200".parse().unwrap(),
        6,
        1
    ));
    // web's egress: UDP 53 anywhere, pg (resolved on db) only to db.
    assert!(holds(
        &n1.egress_allow,
        web,
        "198.51.100.1".parse().unwrap(),
        17,
        53
    ));
    assert!(holds(
        &n1.egress_allow,
        web,
        "10.244.1.11".parse().unwrap(),
        6,
        5432
    ));
    assert!(!holds(
        &n1.egress_allow,
        web,
        "10.244.2.10".parse().unwrap(),
        6,
        5432
    ));
}

#[test]
fn one_policy_more_is_a_few_element_changes_and_diffs_apply_to_the_full_plan() {
    let mut objects = small_cluster();
    let before = compile_node(&compiled(&objects), "n1");
    objects.push(policy(
        "prod",
        "db-from-api",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}],
                            "ports": [{"port": 5432}]}]}),
    ));
    let after = compile_node(&compiled(&objects), "n1");
    let ops = diff(&before, &after);
    // db's one element (web on 5432) becomes one element covering web and api? They are not
    // adjacent addresses, so: one more element for db, nothing else.
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(ops[0].is_add());
    assert!(
        ops[0]
            .element()
            .starts_with("10.244.1.11 . 10.244.2.10 . tcp . 5432")
    );

    // Through the applier: a full load (structure, then flush + add), then only the diff.
    let mut dp = MemPolicy::default();
    let mut applier = Applier::default();
    assert_eq!(
        applier.apply(&mut dp, before.clone()).unwrap(),
        before.elements()
    );
    assert_eq!(applier.apply(&mut dp, after.clone()).unwrap(), 1);
    assert_eq!(applier.apply(&mut dp, after.clone()).unwrap(), 0);
    assert_eq!(dp.scripts.len(), 1, "structure written once");
    assert_eq!(dp.transactions, vec![(before.elements(), true), (1, false)]);
    let mut fresh = MemPolicy::default();
    Applier::default().apply(&mut fresh, after).unwrap();
    assert_eq!(dp.elements(), fresh.elements());
    // And back: deleting the policy removes exactly that element.
    assert_eq!(applier.apply(&mut dp, before).unwrap(), 1);
}
