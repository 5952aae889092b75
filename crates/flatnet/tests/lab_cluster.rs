//! Tier 2: the multi-node lab (issue 4): pod-to-pod on one node and across nodes for both
//! backends without NAT, agent restarts that flush nothing, etcd outages.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, can_run};

fn pods_on_two_nodes() -> String {
    // a and b on node1, c on node2: same-node and cross-node pairs
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: s\n    ports: [{{containerPort: 8080}}]\n---\n"
        )
    };
    [pod("a", "node1"), pod("b", "node1"), pod("c", "node2")].concat()
}

/// `curl http://DST:8080/clientip` from a pod; returns the body.
fn client_ip_seen(lab: &Lab, from: &str, dst: &str) -> String {
    let out = lab.exec(
        "default",
        from,
        &[
            "curl",
            "-s",
            "-m",
            "3",
            &format!("http://{dst}:8080/clientip"),
        ],
    );
    assert!(
        out.status.success(),
        "{from} -> {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_to_pod_without_nat(backend: &str, lab_name: &str) {
    let lab = Lab::up(lab_name, &["--nodes", "2", "--backend", backend]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    lab.apply(&pods_on_two_nodes());
    let a = lab.wait_ready("default", "a", Duration::from_secs(30));
    let b = lab.wait_ready("default", "b", Duration::from_secs(30));
    let c = lab.wait_ready("default", "c", Duration::from_secs(30));
    // same node
    let seen = client_ip_seen(&lab, "a", &b);
    assert_eq!(
        seen.split(':').next(),
        Some(a.as_str()),
        "b sees a's own IP (no NAT): {seen}"
    );
    // across nodes, both directions
    let seen = client_ip_seen(&lab, "a", &c);
    assert_eq!(
        seen.split(':').next(),
        Some(a.as_str()),
        "c sees a's own IP (no NAT): {seen}"
    );
    let seen = client_ip_seen(&lab, "c", &b);
    assert_eq!(
        seen.split(':').next(),
        Some(c.as_str()),
        "b sees c's own IP (no NAT): {seen}"
    );
    // the nodes report the backend and a converged agent
    let nodes = lab.get_json(&["nodes"]);
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2));
}

#[test]
fn pod_to_pod_same_and_cross_node_host_gw() {
    if can_run("pod_to_pod_same_and_cross_node_host_gw") {
        pod_to_pod_without_nat("host-gw", "e2ehostgw");
    }
}

#[test]
fn pod_to_pod_same_and_cross_node_vxlan() {
    if can_run("pod_to_pod_same_and_cross_node_vxlan") {
        pod_to_pod_without_nat("vxlan", "e2evxlan");
    }
}

/// Starts a TCP stream from `from` to `dst:8080` that sends a line every 50 ms for `secs`
/// seconds and fails on any error; returns the child to wait for.
fn long_stream(lab: &Lab, from: &str, dst: &str, secs: u32) -> std::process::Child {
    let script = format!(
        "import socket,time,sys\ns=socket.create_connection(('{dst}',8080),timeout=3)\nend=time.time()+{secs}\nn=0\nwhile time.time()<end:\n  s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n  d=b''\n  while not d.endswith(b'\\r\\n\\r\\nc'):\n    r=s.recv(4096)\n    assert r, 'connection closed'\n    d+=r\n  assert d.startswith(b'HTTP/1.1 200'), d\n  n+=1\n  time.sleep(0.05)\nprint(n)\n"
    );
    lab.cmd(&["exec", from, "--", "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start stream")
}

#[test]
fn tcp_stream_survives_kill_9_and_restart_of_both_agents() {
    if !can_run("tcp_stream_survives_kill_9_and_restart_of_both_agents") {
        return;
    }
    let lab = Lab::up("e2erestart", &["--nodes", "2", "--backend", "vxlan"]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    lab.apply(&pods_on_two_nodes());
    lab.wait_ready("default", "a", Duration::from_secs(30));
    let c = lab.wait_ready("default", "c", Duration::from_secs(30));
    let stream = long_stream(&lab, "a", &c, 6);
    std::thread::sleep(Duration::from_secs(1));
    lab.ok(&["lab", "stop", "agent/node1"]);
    lab.ok(&["lab", "stop", "agent/node2"]);
    std::thread::sleep(Duration::from_millis(500));
    lab.ok(&["lab", "start", "agent/node1"]);
    lab.ok(&["lab", "start", "agent/node2"]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let out = stream.wait_with_output().expect("stream");
    assert!(
        out.status.success(),
        "the stream broke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n > 50, "requests answered across the restart: {n}");
}

#[test]
fn pods_keep_talking_through_an_etcd_outage_and_agents_converge_after() {
    if !can_run("pods_keep_talking_through_an_etcd_outage_and_agents_converge_after") {
        return;
    }
    let lab = Lab::up("e2eoutage", &["--nodes", "2", "--backend", "host-gw"]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    lab.apply(&pods_on_two_nodes());
    let a = lab.wait_ready("default", "a", Duration::from_secs(30));
    let c = lab.wait_ready("default", "c", Duration::from_secs(30));
    lab.ok(&["lab", "stop", "etcd"]);
    // longer than a lease TTL would matter only if agents flushed on errors: they must not
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            client_ip_seen(&lab, "a", &c).split(':').next(),
            Some(a.as_str())
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.ok(&["lab", "start", "etcd"]);
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    // and the cluster still changes: a new pod on node2 is reachable from node1
    lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: d}\nspec:\n  nodeName: node2\n  containers:\n  - name: s\n    ports: [{containerPort: 8080}]\n");
    let d = lab.wait_ready("default", "d", Duration::from_secs(30));
    assert_eq!(
        client_ip_seen(&lab, "a", &d).split(':').next(),
        Some(a.as_str())
    );
}

#[test]
fn ten_agents_started_together_lease_distinct_cidrs_and_keep_them_across_restarts() {
    if !can_run("ten_agents_started_together_lease_distinct_cidrs_and_keep_them_across_restarts") {
        return;
    }
    let lab = Lab::up("e2elease", &["--nodes", "10"]);
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    let cidrs = |lab: &Lab| -> Vec<(String, String)> {
        let nodes = lab.get_json(&["nodes"]);
        let mut v: Vec<(String, String)> = nodes["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|n| {
                (
                    n["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    n["spec"]["podCIDR"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = cidrs(&lab);
    assert_eq!(before.len(), 10);
    let mut distinct: Vec<&String> = before.iter().map(|(_, c)| c).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        10,
        "every node has its own CIDR: {before:?}"
    );
    let status = lab.get_json(&["nodes"]);
    for n in status["items"].as_array().expect("items") {
        assert_eq!(
            n["metadata"]["annotations"]["flatnet.io/agent-health"],
            "healthy"
        );
    }
    for i in 1..=10 {
        lab.ok(&["lab", "stop", &format!("agent/node{i}")]);
    }
    for i in (1..=10).rev() {
        lab.ok(&["lab", "start", &format!("agent/node{i}")]);
    }
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    assert_eq!(
        cidrs(&lab),
        before,
        "restarted agents get their old CIDRs back"
    );
}
