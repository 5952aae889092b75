//! Tier 2: the service proxy (issue 5) with real packets, from pods, from nodes and from the
//! lab's `external` host, through the CLI only.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Lab, can_run};

const WAIT: Duration = Duration::from_secs(40);

/// A Deployment of `replicas` responders (TCP 8080 named `http`, UDP 5353 named `dns`) with
/// label `app: NAME`, optionally pinned to a node.
fn deployment(name: &str, replicas: u32, node: Option<&str>) -> String {
    let pin = node
        .map(|n| format!("      nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{pin}      containers:\n      - name: s\n        ports:\n        - {{name: http, containerPort: 8080}}\n        - {{name: dns, containerPort: 5353, protocol: UDP}}\n---\n"
    )
}

fn pod(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: s\n    ports:\n    - {{name: http, containerPort: 8080}}\n    - {{name: dns, containerPort: 5353, protocol: UDP}}\n---\n"
    )
}

/// A Service named `name` selecting `app: NAME`, port 80 -> `http`; `extra` is appended to
/// its spec (indented YAML lines).
fn service(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 80, targetPort: http}}\n{extra}---\n"
    )
}

fn cluster_ip(lab: &Lab, svc: &str) -> String {
    let v = lab.get_json(&["svc", svc]);
    v["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("{svc} has a clusterIP: {v}"))
        .to_string()
}

fn node_port(lab: &Lab, svc: &str) -> String {
    let v = lab.get_json(&["svc", svc]);
    v["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .unwrap_or_else(|| panic!("{svc} has a nodePort: {v}"))
        .to_string()
}

fn node_ip(lab: &Lab, node: &str) -> String {
    let v = lab.get_json(&["node", node]);
    v["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or_else(|| panic!("{node} has an InternalIP: {v}"))
        .to_string()
}

fn wait_deployment(lab: &Lab, name: &str, replicas: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = lab.get_json(&["pods"]);
        let ready: Vec<String> = v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["metadata"]["labels"]["app"] == name)
                    .filter(|p| {
                        p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if ready.len() == replicas {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {} of {replicas} pods Ready",
            ready.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `curl` `n` times from a pod (one process running a loop); the bodies, one per line.
fn curl_many(lab: &Lab, from: &str, url: &str, n: u32) -> Vec<String> {
    let script = format!("for i in $(seq {n}); do curl -s -m 2 {url} || echo FAILED; echo; done");
    let out = lab.exec("default", from, &["sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn counts(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b.clone()).or_insert(0) += 1;
    }
    m
}

/// curl's exit code for one request from a pod.
fn curl_code(lab: &Lab, from: &str, url: &str, timeout_s: u32) -> Option<i32> {
    lab.exec(
        "default",
        from,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            &timeout_s.to_string(),
            url,
        ],
    )
    .status
    .code()
}

/// The lab: 2 nodes, a client pod on node1, the `web` Deployment (3 pods) and its Service.
fn lab_with_web(name: &str, svc_extra: &str) -> Lab {
    let lab = Lab::up(name, &["--nodes", "2"]);
    lab.apply(
        &(pod("client", "node1", "client")
            + &deployment("web", 3, None)
            + &service("web", svc_extra)),
    );
    lab.wait_ready("default", "client", WAIT);
    wait_deployment(&lab, "web", 3);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    lab
}

#[test]
fn cluster_ip_spreads_connections_over_every_endpoint_without_nat() {
    if !can_run("cluster_ip_spreads_connections_over_every_endpoint_without_nat") {
        return;
    }
    let lab = lab_with_web("svccip", "");
    let ip = cluster_ip(&lab, "web");
    let bodies = curl_many(&lab, "client", &format!("http://{ip}/"), 300);
    let c = counts(&bodies);
    assert_eq!(c.len(), 3, "three backends answer: {c:?}");
    for (backend, n) in &c {
        assert!(backend.starts_with("web-"), "{c:?}");
        assert!(*n >= 45, "{backend} got {n} of 300 (< 15 %): {c:?}");
    }
    // The backend sees the client pod's own address.
    let client_ip = lab.wait_ready("default", "client", WAIT);
    let seen = curl_many(&lab, "client", &format!("http://{ip}/clientip"), 1);
    assert_eq!(
        seen[0].split(':').next(),
        Some(client_ip.as_str()),
        "{seen:?}"
    );
    // `trace` explains it from the same compiled state.
    let t: serde_json::Value =
        serde_json::from_str(&lab.ok(&["trace", "client", "web", "-o", "json"])).unwrap();
    assert_eq!(t["proxy"]["outcome"]["kind"], "dnat", "{t}");
    assert_eq!(t["proxy"]["service"], "default/web:http");
    assert_eq!(t["hops"].as_array().map(Vec::len), Some(3), "{t}");
    assert!(
        t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["allowed"] == true),
        "{t}"
    );
    // From a node itself (output hook) too.
    let out = lab.ok(&[
        "lab",
        "exec",
        "node2",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        &format!("http://{ip}/"),
    ]);
    assert!(out.starts_with("web-"), "{out}");
}

#[test]
fn a_service_without_ready_endpoints_refuses_at_once() {
    if !can_run("a_service_without_ready_endpoints_refuses_at_once") {
        return;
    }
    let lab = Lab::up("svcnoep", &["--nodes", "1"]);
    lab.apply(
        &(pod("client", "node1", "client")
            + &service("nothing", "  - {name: dns, port: 53, protocol: UDP}\n")),
    );
    lab.wait_ready("default", "client", WAIT);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let ip = cluster_ip(&lab, "nothing");
    // curl exit 7: connection refused (a timeout would be 28).
    assert_eq!(
        curl_code(&lab, "client", &format!("http://{ip}/"), 5),
        Some(7)
    );
    // UDP: ICMP port unreachable -> ECONNREFUSED on a connected socket.
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ns.connect(('{ip}',53))\ns.send(b'x')\ntry:\n    s.recv(100)\n    print('ANSWER')\nexcept ConnectionRefusedError:\n    print('REFUSED')\nexcept socket.timeout:\n    print('TIMEOUT')\n"
    );
    let out = lab.exec("default", "client", &["python3", "-c", &py]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "REFUSED");
    // A port the service does not have is refused too.
    assert_eq!(
        curl_code(&lab, "client", &format!("http://{ip}:81/"), 5),
        Some(7)
    );
}

#[test]
fn session_affinity_pins_a_client_and_switching_it_off_spreads_again() {
    if !can_run("session_affinity_pins_a_client_and_switching_it_off_spreads_again") {
        return;
    }
    let lab = lab_with_web("svcaff", "  sessionAffinity: ClientIP\n");
    let ip = cluster_ip(&lab, "web");
    let c = counts(&curl_many(&lab, "client", &format!("http://{ip}/"), 40));
    assert_eq!(c.len(), 1, "one backend for a pinned client: {c:?}");
    lab.apply(&service("web", "  sessionAffinity: None\n"));
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let c = counts(&curl_many(&lab, "client", &format!("http://{ip}/"), 60));
    assert!(c.len() >= 2, "spread again without affinity: {c:?}");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    if !can_run("a_pod_reaches_itself_through_its_service") {
        return;
    }
    let lab = Lab::up("svchairpin", &["--nodes", "1"]);
    lab.apply(&(pod("solo", "node1", "solo") + &service("solo", "")));
    lab.wait_ready("default", "solo", WAIT);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let ip = cluster_ip(&lab, "solo");
    let bodies = curl_many(&lab, "solo", &format!("http://{ip}/"), 5);
    assert_eq!(bodies, vec!["solo".to_string(); 5]);
}

#[test]
fn node_port_answers_from_external_and_local_policy_keeps_the_client_ip() {
    if !can_run("node_port_answers_from_external_and_local_policy_keeps_the_client_ip") {
        return;
    }
    let lab = Lab::up("svcnp", &["--nodes", "2"]);
    lab.apply(
        &(pod("client", "node1", "client")
            + &deployment("web", 2, Some("node1"))
            + &service("web", "  type: NodePort\n")
            + &deployment("loc", 1, Some("node1"))
            + &service("loc", "  type: NodePort\n  externalTrafficPolicy: Local\n")),
    );
    wait_deployment(&lab, "web", 2);
    wait_deployment(&lab, "loc", 1);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let (n1, n2) = (node_ip(&lab, "node1"), node_ip(&lab, "node2"));
    let np = node_port(&lab, "web");
    for node in [&n1, &n2] {
        let out = lab.ok(&[
            "lab",
            "exec",
            "external",
            "--",
            "curl",
            "-s",
            "-m",
            "3",
            &format!("http://{node}:{np}/"),
        ]);
        assert!(out.starts_with("web-"), "NodePort on {node}: {out}");
        // Masqueraded: the backend sees the node's address, not external's.
        let seen = lab.ok(&[
            "lab",
            "exec",
            "external",
            "--",
            "curl",
            "-s",
            "-m",
            "3",
            &format!("http://{node}:{np}/clientip"),
        ]);
        assert!(
            !seen.starts_with("172.20.0.2:"),
            "ETP=Cluster masquerades: {seen}"
        );
    }
    // From a pod and from a node too.
    let out = curl_many(&lab, "client", &format!("http://{n2}:{np}/"), 1);
    assert!(out[0].starts_with("web-"), "{out:?}");
    let out = lab.ok(&[
        "lab",
        "exec",
        "node1",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        &format!("http://{n1}:{np}/"),
    ]);
    assert!(out.starts_with("web-"), "{out}");

    let lp = node_port(&lab, "loc");
    let seen = lab.ok(&[
        "lab",
        "exec",
        "external",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        &format!("http://{n1}:{lp}/clientip"),
    ]);
    assert!(
        seen.starts_with("172.20.0.2:"),
        "ETP=Local keeps the client IP: {seen}"
    );
    // node2 has no local endpoint: external traffic is dropped there (a timeout, exit 28).
    let out = lab.run(&[
        "lab",
        "exec",
        "external",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        &format!("http://{n2}:{lp}/"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(28),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn scaling_a_deployment_changes_the_endpoints_within_a_second() {
    if !can_run("scaling_a_deployment_changes_the_endpoints_within_a_second") {
        return;
    }
    let lab = lab_with_web("svcscale", "");
    let ip = cluster_ip(&lab, "web");
    lab.apply(&deployment("web", 4, None));
    let pods = wait_deployment(&lab, "web", 4);
    // From the moment the fourth pod is Ready, it must answer within a second.
    let ready_at = Instant::now();
    let deadline = ready_at + Duration::from_secs(10);
    loop {
        let c = counts(&curl_many(&lab, "client", &format!("http://{ip}/"), 40));
        if c.len() == 4 {
            let took = ready_at.elapsed();
            eprintln!("4th endpoint answering {took:?} after its pod was seen Ready ({c:?})");
            assert!(took < Duration::from_secs(2), "took {took:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never 4 backends: {c:?} of {pods:?}"
        );
    }
    lab.apply(&deployment("web", 1, None));
    let left = wait_deployment(&lab, "web", 1);
    let gone_at = Instant::now();
    loop {
        let c = counts(&curl_many(&lab, "client", &format!("http://{ip}/"), 20));
        if c.keys().all(|k| *k == left[0]) {
            eprintln!(
                "endpoints down to 1 {:?} after the pods were gone",
                gone_at.elapsed()
            );
            break;
        }
        assert!(
            gone_at.elapsed() < Duration::from_secs(5),
            "still answered by {c:?}"
        );
    }
}

#[test]
fn udp_flows_move_to_the_new_endpoint_when_the_old_one_goes() {
    if !can_run("udp_flows_move_to_the_new_endpoint_when_the_old_one_goes") {
        return;
    }
    let lab = Lab::up("svcudp", &["--nodes", "1"]);
    lab.apply(
        &(pod("client", "node1", "client")
            + &pod("old", "node1", "dns")
            + "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  selector: {app: dns}\n  ports:\n  - {name: dns, port: 53, targetPort: dns, protocol: UDP}\n---\n"),
    );
    lab.wait_ready("default", "client", WAIT);
    lab.wait_ready("default", "old", WAIT);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let ip = cluster_ip(&lab, "dns");
    // Same source port every time, as the upstream conntrack e2e test does.
    let ask = || {
        let py = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('',12345))\ns.settimeout(1)\ns.sendto(b'x',('{ip}',53))\ntry:\n    print(s.recv(100).decode())\nexcept Exception as e:\n    print('NONE', type(e).__name__)\n"
        );
        let out = lab.exec("default", "client", &["python3", "-c", &py]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ask(), "old");
    lab.apply(&pod("new", "node1", "dns"));
    lab.wait_ready("default", "new", WAIT);
    lab.ok(&["delete", "pod", "old"]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ask();
        if got == "new" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flow still goes nowhere: {got}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn external_ips_and_internal_traffic_policy_local() {
    if !can_run("external_ips_and_internal_traffic_policy_local") {
        return;
    }
    let lab = Lab::up("svcext", &["--nodes", "2"]);
    lab.apply(
        &(pod("client", "node1", "client")
            + &pod("far", "node2", "far")
            + &deployment("web", 1, Some("node1"))
            + &service("web", "  externalIPs: [192.0.2.50]\n")
            + &service("far", "  internalTrafficPolicy: Local\n")),
    );
    lab.wait_ready("default", "client", WAIT);
    lab.wait_ready("default", "far", WAIT);
    wait_deployment(&lab, "web", 1);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let out = curl_many(&lab, "client", "http://192.0.2.50/", 1);
    assert!(out[0].starts_with("web-"), "externalIP from a pod: {out:?}");
    // internalTrafficPolicy Local: client on node1, the only endpoint on node2: dropped.
    let far = cluster_ip(&lab, "far");
    assert_eq!(
        curl_code(&lab, "client", &format!("http://{far}/"), 2),
        Some(28)
    );
    let out = lab.ok(&[
        "lab",
        "exec",
        "node2",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        &format!("http://{far}/"),
    ]);
    assert_eq!(out, "far");
}

fn lb_ip(lab: &Lab, svc: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = lab.get_json(&["svc", svc]);
        if let Some(ip) = v["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
            return ip.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{svc} got no LoadBalancer IP: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn load_balancer_ips_answer_from_external_pods_and_honour_source_ranges() {
    if !can_run("load_balancer_ips_answer_from_external_pods_and_honour_source_ranges") {
        return;
    }
    let lab = Lab::up("svclb", &["--nodes", "3"]);
    lab.apply(
        &(pod("client", "node1", "client")
            + &deployment("web", 2, None)
            + &service("web", "  type: LoadBalancer\n")
            + &deployment("loc", 1, Some("node3"))
            + &service(
                "loc",
                "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
            )
            + &deployment("fw", 1, None)
            + &service(
                "fw",
                "  type: LoadBalancer\n  loadBalancerSourceRanges: [172.20.0.2/32]\n",
            )),
    );
    lab.wait_ready("default", "client", WAIT);
    for (d, n) in [("web", 2), ("loc", 1), ("fw", 1)] {
        wait_deployment(&lab, d, n);
    }
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let web = lb_ip(&lab, "web");
    let curl_ext = |url: &str| {
        lab.run(&[
            "lab", "exec", "external", "--", "curl", "-s", "-m", "3", url,
        ])
    };
    let out = curl_ext(&format!("http://{web}/"));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("web-"),
        "{out:?}"
    );
    let from_pod = curl_many(&lab, "client", &format!("http://{web}/"), 1);
    assert!(from_pod[0].starts_with("web-"), "{from_pod:?}");
    // Local policy: announced by the node with the endpoint, client address kept.
    let loc = lb_ip(&lab, "loc");
    let seen = curl_ext(&format!("http://{loc}/clientip"));
    assert!(
        String::from_utf8_lossy(&seen.stdout).starts_with("172.20.0.2:"),
        "{seen:?}"
    );
    // Source ranges: external (in the range) gets in, a pod (outside it) is dropped.
    let fw = lb_ip(&lab, "fw");
    let out = curl_ext(&format!("http://{fw}/"));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("fw-"),
        "{out:?}"
    );
    assert_eq!(
        curl_code(&lab, "client", &format!("http://{fw}/"), 2),
        Some(28)
    );
    // The node that announces web's address goes away: another one takes it over.
    let holder = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| {
            lab.ok(&["lab", "exec", n, "--", "ip", "-o", "addr", "show"])
                .contains(&format!("{web}/32"))
        })
        .expect("one node holds the LoadBalancer IP");
    lab.ok(&["lab", "stop", &format!("agent/{holder}")]);
    // Its lease runs out (15 s TTL); then a survivor announces the address.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let others: Vec<&str> = ["node1", "node2", "node3"]
            .into_iter()
            .filter(|n| *n != holder)
            .filter(|n| {
                lab.ok(&["lab", "exec", n, "--", "ip", "-o", "addr", "show"])
                    .contains(&format!("{web}/32"))
            })
            .collect();
        if others.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody took over {web}: {others:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The stopped agent left its address in place (nothing is flushed); drop it as a dead
    // node's address would vanish, then external reaches the new holder.
    lab.ok(&[
        "lab",
        "exec",
        holder,
        "--",
        "ip",
        "addr",
        "del",
        &format!("{web}/32"),
        "dev",
        "eth0",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl_ext(&format!("http://{web}/"));
        if String::from_utf8_lossy(&out.stdout).starts_with("web-") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "external does not reach {web} after takeover"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn pods_reach_the_outside_as_their_node_and_each_other_unnated() {
    if !can_run("pods_reach_the_outside_as_their_node_and_each_other_unnated") {
        return;
    }
    let lab = Lab::up("svcegress", &["--nodes", "2"]);
    lab.apply(&(pod("client", "node1", "client") + &pod("far", "node2", "far")));
    let client_ip = lab.wait_ready("default", "client", WAIT);
    lab.wait_ready("default", "far", WAIT);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let mut server = lab
        .cmd(&[
            "lab",
            "exec",
            "external",
            "--",
            common::flatnet_bin(),
            "lab",
            "responder",
            "--name",
            "outside",
            "--tcp",
            "9090",
        ])
        .spawn()
        .expect("responder on external");
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let out = curl_many(&lab, "client", "http://172.20.0.2:9090/clientip", 1);
        if !out[0].starts_with("FAILED") {
            break out[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "external responder not reachable"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        seen.starts_with(&format!("{}:", node_ip(&lab, "node1"))),
        "external sees the node: {seen}"
    );
    let far = lab.wait_ready("default", "far", WAIT);
    let seen = curl_many(&lab, "client", &format!("http://{far}:8080/clientip"), 1);
    assert!(
        seen[0].starts_with(&format!("{client_ip}:")),
        "pod to pod keeps the pod address: {seen:?}"
    );
}

/// A line-echo server on TCP 9000 that prefixes each answer with its pod's name.
const ECHO_PY: &str = "import os,socketserver\nN=os.environ['POD_NAME'].encode()\nclass H(socketserver.StreamRequestHandler):\n    def handle(self):\n        for line in self.rfile:\n            self.wfile.write(N+b' '+line); self.wfile.flush()\nsocketserver.ThreadingTCPServer.allow_reuse_address=True\nsocketserver.ThreadingTCPServer(('',9000),H).serve_forever()\n";

/// An echo pod of service `echo`; `spec` and `container` are appended to its spec and its
/// container (indented YAML lines).
fn echo_pod(name: &str, spec: &str, container: &str) -> String {
    let script = serde_json::to_string(ECHO_PY).unwrap();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: echo}}}}\nspec:\n  nodeName: node1\n{spec}  containers:\n  - name: s\n    command: [/usr/bin/python3, -c, {script}]\n    ports: [{{containerPort: 9000}}]\n{container}---\n"
    )
}

/// Asks the echo service once on a new connection; the answering pod's name.
fn who(lab: &Lab, ip: &str) -> String {
    let py = format!(
        "import socket\ns=socket.create_connection(('{ip}',80),timeout=2)\ns.sendall(b'who\\n')\nprint(s.recv(100).decode().split()[0])\n"
    );
    let out = lab.exec("default", "client", &["/usr/bin/python3", "-c", &py]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn endpoint_conditions(lab: &Lab, pod: &str) -> Option<serde_json::Value> {
    let slices = lab.get_json(&["endpointslices"]);
    slices["items"].as_array()?.iter().find_map(|s| {
        s["endpoints"]
            .as_array()?
            .iter()
            .find_map(|e| (e["targetRef"]["name"] == pod).then(|| e["conditions"].clone()))
    })
}

/// Upstream's "should keep existing connections when pod is terminating", "should fallback to
/// terminating endpoints when there are no ready endpoints" and kubectl's grace-period flags,
/// with a kubelet that deletes gracefully: deletionTimestamp, the preStop hook, SIGTERM, then
/// SIGKILL at the end of the grace period.
#[test]
fn graceful_delete_keeps_connections_and_falls_back_to_terminating_endpoints() {
    if !can_run("graceful_delete_keeps_connections_and_falls_back_to_terminating_endpoints") {
        return;
    }
    let lab = Lab::up("e2egrace", &["--nodes", "1"]);
    // `a` stays up 30 s after its delete (preStop sleep), then stops on SIGTERM.
    lab.apply(&(echo_pod(
        "a",
        "  terminationGracePeriodSeconds: 60\n",
        "    lifecycle: {preStop: {sleep: {seconds: 30}}}\n",
    ) + "apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  selector: {app: echo}\n  ports: [{port: 80, targetPort: 9000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  nodeName: node1\n  containers: [{name: c, command: [sleep, infinity]}]\n"));
    lab.wait_ready("default", "a", WAIT);
    lab.wait_ready("default", "client", WAIT);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let ip = cluster_ip(&lab, "echo");
    assert_eq!(who(&lab, &ip), "a");

    // An established connection through the ClusterIP: one answer before the delete, one
    // while `a` terminates.
    let py = format!(
        "import socket,sys,time\ns=socket.create_connection(('{ip}',80),timeout=5)\ns.sendall(b'one\\n'); print(s.recv(100).decode().strip(), flush=True)\nsys.stdin.readline()\ns.sendall(b'two\\n'); print(s.recv(100).decode().strip(), flush=True)\n"
    );
    let mut conn = lab
        .cmd(&["exec", "client", "--", "/usr/bin/python3", "-c", &py])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(conn.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "a one");

    let started = Instant::now();
    let deleted = lab.ok(&["delete", "pod", "a", "--wait=false"]);
    assert!(deleted.contains("pod/a deleted"), "{deleted}");
    let a = lab.get_json(&["pod", "a"]);
    assert!(a["metadata"]["deletionTimestamp"].is_string(), "{a}");
    assert_eq!(a["metadata"]["deletionGracePeriodSeconds"], 60);
    assert!(lab.ok(&["get", "pods"]).contains("Terminating"));
    // The endpoints controller marks it terminating and still serving.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = endpoint_conditions(&lab, "a");
        if c.as_ref().is_some_and(|c| c["terminating"] == true) {
            let c = c.unwrap();
            assert_eq!(
                (c["ready"].clone(), c["serving"].clone()),
                (false.into(), true.into()),
                "{c}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never became terminating: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    {
        use std::io::Write;
        conn.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "a two",
        "the established connection survives the delete"
    );
    assert!(conn.wait().unwrap().success());
    // No ready endpoint is left: new connections fall back to the terminating one.
    assert_eq!(
        who(&lab, &ip),
        "a",
        "fallback to a serving, terminating endpoint"
    );

    // Once a ready endpoint exists, new connections go there only.
    lab.apply(&echo_pod("b", "", ""));
    lab.wait_ready("default", "b", WAIT);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    for _ in 0..6 {
        assert_eq!(
            who(&lab, &ip),
            "b",
            "a terminating endpoint gets no new connection"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the checks above must run inside a's preStop sleep; took {:?}",
        started.elapsed()
    );
    assert!(
        lab.run(&["get", "pod", "a"]).status.success(),
        "a is still terminating"
    );

    // --grace-period=0 --force removes it at once; the kubelet cuts the termination short.
    lab.ok(&["delete", "pod", "a", "--grace-period=0", "--force"]);
    assert!(!lab.run(&["get", "pod", "a"]).status.success());
    let netns = lab::Lab::new("e2egrace").unwrap().pod_netns("default", "a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::lab_namespaces("e2egrace").contains(&netns) {
        assert!(
            Instant::now() < deadline,
            "a's sandbox outlived its forced delete"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A process that ignores SIGTERM is killed when --grace-period runs out; delete waits.
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stubborn}\nspec:\n  nodeName: node1\n  containers: [{name: c, command: [sh, -c, \"trap '' TERM; while :; do sleep 0.2; done\"]}]\n",
    );
    lab.wait_ready("default", "stubborn", WAIT);
    let t = Instant::now();
    lab.ok(&["delete", "pod", "stubborn", "--grace-period=2"]);
    let took = t.elapsed();
    assert!(!lab.run(&["get", "pod", "stubborn"]).status.success());
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "SIGKILL after the 2 s grace period, delete waiting for it: {took:?}"
    );
    // A pod that stops on SIGTERM is gone long before its 30 s default.
    let t = Instant::now();
    lab.ok(&["delete", "pod", "client"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// kube-proxy's health-check node port (upstream "HealthCheck should pass only on the node
/// where num(endpoints) > 0. All other nodes should fail the healthcheck") and its node health
/// server on 10256, probed from `external` as a cloud load balancer would.
#[test]
fn health_check_node_port_answers_with_local_endpoints_per_node() {
    if !can_run("health_check_node_port_answers_with_local_endpoints_per_node") {
        return;
    }
    let lab = Lab::up("svchc", &["--nodes", "2"]);
    let svc = service(
        "loc",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
    );
    lab.apply(&(deployment("loc", 1, Some("node1")) + &svc));
    wait_deployment(&lab, "loc", 1);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let port = lab.get_json(&["svc", "loc"])["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a Local LoadBalancer Service gets a healthCheckNodePort")
        .to_string();
    let (n1, n2) = (node_ip(&lab, "node1"), node_ip(&lab, "node2"));
    // (status code, localEndpoints) from external.
    let probe = |ip: &str, port: &str| -> (String, serde_json::Value) {
        let out = lab.run(&[
            "lab",
            "exec",
            "external",
            "--",
            "curl",
            "-s",
            "-m",
            "2",
            "-D",
            "-",
            &format!("http://{ip}:{port}/"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text.split_whitespace().nth(1).unwrap_or("none").to_string();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        if code == "200" || code == "503" {
            assert!(
                text.to_ascii_lowercase()
                    .contains("x-content-type-options: nosniff"),
                "{text}"
            );
            assert_eq!(v["service"]["name"], "loc", "{text}");
            assert_eq!(v["service"]["namespace"], "default", "{text}");
        }
        (code, v["localEndpoints"].clone())
    };
    // Follows the endpoints within a second of the dataplane converging.
    let expect = |want: [(&str, u64); 2]| {
        lab.ok(&["wait", "--converged", "--timeout", "30s"]);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let got = [probe(&n1, &port), probe(&n2, &port)];
            let ok = got
                .iter()
                .zip(want)
                .all(|((c, n), (wc, wn))| c == wc && *n == wn);
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "want {want:?}, got {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    expect([("200", 1), ("503", 0)]);
    lab.apply(&deployment("loc", 2, Some("node1")));
    wait_deployment(&lab, "loc", 2);
    expect([("200", 2), ("503", 0)]);
    lab.apply(&pod("n2", "node2", "loc"));
    lab.wait_ready("default", "n2", WAIT);
    expect([("200", 2), ("200", 1)]);
    lab.apply(&deployment("loc", 0, Some("node1")));
    expect([("503", 0), ("200", 1)]);
    // kube-proxy's own health: 200 on every node while its proxy is in sync.
    for ip in [&n1, &n2] {
        let out = lab.run(&[
            "lab",
            "exec",
            "external",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "2",
            &format!("http://{ip}:10256/healthz"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{ip}:10256/healthz"
        );
    }
}
