//! Tier 2: Services in the lab's API (issue 5, part 1), through the CLI only: clusterIP and
//! nodePort allocation at apply, EndpointSlices written by the controller from the pods'
//! readiness and named ports, `wait --converged` waiting for them, LoadBalancer IPs from the
//! lab pool.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, can_run};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

/// A Deployment `web` of responders declaring TCP 8080 as `http`.
fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: s\n        ports:\n        - {{name: http, containerPort: 8080}}\n---\n"
    )
}

/// Service `web`: NodePort, port 80 -> the pods' `http`.
const WEB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n---\n";

fn lb_service(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http}}\n{extra}---\n"
    )
}

/// The endpoints of the slices of `svc`: (address, ready), sorted, and the slices' ports.
fn slice_state(lab: &Lab, svc: &str) -> (Vec<(String, bool)>, Vec<Value>) {
    let v = lab.get_json(&["endpointslices"]);
    let mut eps = Vec::new();
    let mut ports = Vec::new();
    for s in v["items"].as_array().expect("items") {
        if s["metadata"]["labels"]["kubernetes.io/service-name"] != svc {
            continue;
        }
        assert_eq!(s["apiVersion"], "discovery.k8s.io/v1", "{s}");
        assert_eq!(s["kind"], "EndpointSlice", "{s}");
        assert_eq!(s["addressType"], "IPv4", "{s}");
        assert_eq!(
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io",
            "{s}"
        );
        assert_eq!(
            s["metadata"]["ownerReferences"][0]["kind"], "Service",
            "{s}"
        );
        for e in s["endpoints"].as_array().expect("endpoints") {
            eps.push((
                e["addresses"][0].as_str().expect("address").to_string(),
                e["conditions"]["ready"] == true,
            ));
        }
        ports.extend(s["ports"].as_array().cloned().unwrap_or_default());
    }
    eps.sort();
    (eps, ports)
}

/// The IPs of the Ready pods of Deployment `web`.
fn web_pod_ips(lab: &Lab) -> Vec<String> {
    let v = lab.get_json(&["pods"]);
    let mut ips: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web")
        // A pod removed by a scale-down terminates gracefully for a moment (issue 21).
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips
}

/// Polls until the slices of `web` hold exactly `n` Ready endpoints; returns how long it took
/// and the addresses.
fn wait_ready_endpoints(lab: &Lab, n: usize) -> (Duration, Vec<String>) {
    let start = Instant::now();
    loop {
        let (eps, _) = slice_state(lab, "web");
        if eps.len() == n && eps.iter().all(|(_, r)| *r) {
            return (start.elapsed(), eps.into_iter().map(|(a, _)| a).collect());
        }
        assert!(
            start.elapsed() < WAIT,
            "web never had {n} ready endpoints: {eps:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn in_cidr(ip: &str, net: u32, prefix: u32) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == net & mask
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from(std::net::Ipv4Addr::new(a, b, c, d))
}

#[test]
fn services_get_addresses_and_endpointslices_follow_the_pods() {
    if !can_run("services_get_addresses_and_endpointslices_follow_the_pods") {
        return;
    }
    let lab = Lab::up("e2esvcapi", &["--nodes", "2"]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let out = lab.apply(&[deployment(2), WEB_SERVICE.to_string()].concat());
    assert!(out.contains("service/web created"), "{out}");
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);

    // Allocated fields, as `get -o json` shows them.
    let svc = lab.get_json(&["svc", "web"]);
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    assert!(in_cidr(&ip, ip4(10, 96, 0, 0), 12), "{ip}");
    assert_eq!(svc["spec"]["clusterIPs"], serde_json::json!([ip]));
    let np = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    assert!((30000..=32767).contains(&np), "{np}");

    // Converged means the slices are there: the pods' IPs, Ready, port resolved by name.
    let (eps, ports) = slice_state(&lab, "web");
    let pods = web_pod_ips(&lab);
    assert_eq!(pods.len(), 2);
    assert_eq!(
        eps,
        pods.iter().map(|p| (p.clone(), true)).collect::<Vec<_>>()
    );
    assert_eq!(
        ports,
        vec![serde_json::json!({"name": "http", "protocol": "TCP", "port": 8080})]
    );

    // Tables like kubectl's.
    let table = lab.ok(&["get", "svc"]);
    assert!(
        table.starts_with("NAME")
            && table.contains("TYPE")
            && table.contains("CLUSTER-IP")
            && table.contains("EXTERNAL-IP")
            && table.contains("PORT(S)"),
        "{table}"
    );
    assert!(table.contains(&format!("80:{np}/TCP")), "{table}");
    let table = lab.ok(&["get", "endpointslices"]);
    assert!(
        table.contains("ADDRESSTYPE") && table.contains("8080"),
        "{table}"
    );
    assert!(table.contains(&pods[0]), "{table}");

    // Scaling: the slice follows (how long it took is reported, not asserted).
    lab.apply(&deployment(4));
    let (took, addrs) = wait_ready_endpoints(&lab, 4);
    eprintln!("scale 2 -> 4: 4 ready endpoints {took:?} after the apply");
    assert_eq!(addrs, web_pod_ips(&lab));
    lab.apply(&deployment(1));
    let (took, addrs) = wait_ready_endpoints(&lab, 1);
    eprintln!("scale 4 -> 1: 1 endpoint {took:?} after the apply");
    assert_eq!(addrs, web_pod_ips(&lab));

    // Re-applying keeps clusterIP and nodePort.
    let out = lab.apply(WEB_SERVICE);
    assert!(out.contains("service/web unchanged"), "{out}");
    let again = lab.get_json(&["svc", "web"]);
    assert_eq!(again["spec"]["clusterIP"], ip.as_str());
    assert_eq!(again["spec"]["ports"][0]["nodePort"], np);

    // A taken clusterIP, an out-of-range nodePort: refused, naming field and value, and
    // nothing of the file applied.
    let bad = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: never}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: copy}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
    );
    let out = lab.try_apply(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Service \"default/copy\" is invalid: spec.clusterIP")
            && err.contains(&format!("\"{ip}\""))
            && err.contains("already allocated (to service default/web)"),
        "{err}"
    );
    let bad = "apiVersion: v1\nkind: Namespace\nmetadata: {name: never}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: low}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 8080}]\n";
    let out = lab.try_apply(bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.ports[0].nodePort: Invalid value: 8080") && err.contains("30000-32767"),
        "{err}"
    );
    for (kind, name) in [("ns", "never"), ("svc", "copy"), ("svc", "low")] {
        let out = lab.run(&["get", kind, name]);
        assert!(!out.status.success(), "{kind} {name} must not exist");
    }
}

#[test]
fn load_balancers_get_an_address_from_the_pool_keep_it_and_release_it() {
    if !can_run("load_balancers_get_an_address_from_the_pool_keep_it_and_release_it") {
        return;
    }
    let lab = Lab::up("e2esvclb", &["--nodes", "1"]);
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    lab.apply(&[deployment(1), lb_service("front", "")].concat());
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    let svc = lab.get_json(&["svc", "front"]);
    let lb_ip = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("an ingress IP: {svc}"))
        .to_string();
    assert!(in_cidr(&lb_ip, ip4(172, 20, 0, 240), 28), "{lb_ip}");
    assert!(
        svc["spec"]["ports"][0]["nodePort"].as_u64().is_some(),
        "{svc}"
    );
    let table = lab.ok(&["get", "svc", "front"]);
    assert!(
        table.contains(&lb_ip) && table.contains("LoadBalancer"),
        "{table}"
    );

    // Kept on re-apply (the manifest does not set it).
    let out = lab.apply(&lb_service("front", ""));
    assert!(out.contains("service/front unchanged"), "{out}");
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let svc = lab.get_json(&["svc", "front"]);
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"][0]["ip"],
        lb_ip.as_str()
    );

    // Asking for the same address while it is in use: pending, and `status` says so; the
    // cluster still counts as converged (a full or taken pool is not something to wait for).
    lab.apply(&lb_service("twin", &format!("  loadBalancerIP: {lb_ip}\n")));
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let twin = lab.get_json(&["svc", "twin"]);
    assert!(
        twin["status"]["loadBalancer"].get("ingress").is_none(),
        "{twin}"
    );
    let status = lab.ok(&["status"]);
    assert!(
        status.contains("service default/twin: LoadBalancer address pending")
            && status.contains("in use by service default/front"),
        "{status}"
    );
    assert!(lab.ok(&["get", "svc", "twin"]).contains("<pending>"));

    // Delete releases: the waiting service gets the address.
    lab.ok(&["delete", "svc", "front"]);
    let start = Instant::now();
    loop {
        let twin = lab.get_json(&["svc", "twin"]);
        if twin["status"]["loadBalancer"]["ingress"][0]["ip"] == lb_ip.as_str() {
            eprintln!("released address reassigned after {:?}", start.elapsed());
            break;
        }
        assert!(start.elapsed() < WAIT, "twin never got {lb_ip}: {twin}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // and the deleted service's slices are gone
    lab.ok(&["wait", "--converged", "--timeout", "30s"]);
    let (eps, _) = slice_state(&lab, "front");
    assert!(eps.is_empty(), "{eps:?}");
    let v = lab.get_json(&["endpointslices"]);
    assert!(
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] != "front"),
        "{v}"
    );
}
