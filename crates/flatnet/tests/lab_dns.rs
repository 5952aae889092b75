//! Tier 2: the cluster DNS (issue 7) through the CLI, queried from pods and nodes with ordinary
//! tools (getent, nslookup, dig). `external` is outside the cluster and, like a host outside a
//! real cluster, has no route to ClusterIPs and no kube-dns; it is not queried here.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Lab, can_run};

const WAIT: Duration = Duration::from_secs(60);

const CLUSTER: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: s
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec:
  selector: {app: web}
  ports: [{port: 81, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers:
  - name: s
    ports: [{name: pg, containerPort: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: db
  containers:
  - name: s
    ports: [{name: pg, containerPort: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: pg}]
---
apiVersion: v1
kind: Service
metadata: {name: search}
spec:
  type: ExternalName
  externalName: search.example.com
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: c
    command: [sh, -c, 'cat /etc/resolv.conf; exec sleep 100000']
";

fn exec_out(lab: &Lab, pod: &str, cmd: &[&str]) -> (i32, String, String) {
    let o = lab.exec("default", pod, cmd);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `dig +short` lines from the client pod.
fn dig(lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut a = vec!["dig", "+short", "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    let (code, out, err) = exec_out(lab, "client", &a);
    assert_eq!(code, 0, "dig {args:?}: {out}{err}");
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// The `status:` of a full dig answer from the client pod, and its answer count.
fn dig_status(lab: &Lab, args: &[&str]) -> (String, usize) {
    let mut a = vec!["dig", "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    let (_, out, err) = exec_out(lab, "client", &a);
    let status = out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| {
            s.trim_end_matches(|c: char| !c.is_ascii_alphabetic())
                .split(',')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|| panic!("dig {args:?} printed no status: {out}{err}"));
    let answers = out
        .lines()
        .find_map(|l| l.split("ANSWER: ").nth(1))
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (status, answers)
}

fn cluster_ip(lab: &Lab, ns: &str, svc: &str) -> String {
    lab.get_json(&["svc", svc, "-n", ns])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string()
}

fn pod_ip(lab: &Lab, pod: &str) -> String {
    lab.get_json(&["pod", pod])["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn pods_and_nodes_resolve_cluster_names_through_kube_dns() {
    if !can_run("pods_and_nodes_resolve_cluster_names_through_kube_dns") {
        return;
    }
    let lab = Lab::up("dnse2e", &["--nodes", "2"]);
    // lab up deployed kube-dns at the tenth address of the service CIDR.
    assert_eq!(cluster_ip(&lab, "kube-system", "kube-dns"), "10.96.0.10");
    lab.apply(CLUSTER);
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    for p in ["client", "db-0", "db-1"] {
        lab.wait_ready("default", p, WAIT);
    }
    let web_ip = cluster_ip(&lab, "default", "web");

    // resolv.conf: the same in the container (its own output) and under `flatnet exec`.
    let want = "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";
    let (_, seen, _) = exec_out(&lab, "client", &["cat", "/etc/resolv.conf"]);
    assert_eq!(seen, want);
    let log = std::fs::read_to_string("/var/lib/flatnet/dnse2e/pods/default_client/c.log")
        .unwrap_or_default();
    assert!(log.starts_with(want), "the container's own view: {log:?}");
    assert_ne!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        want,
        "the host's file is untouched"
    );

    // Short and full names through the search path (glibc, as every program resolves).
    for name in ["web", "web.default", "web.default.svc.cluster.local"] {
        let (code, out, err) = exec_out(&lab, "client", &["getent", "hosts", name]);
        assert_eq!(code, 0, "getent hosts {name}: {out}{err}");
        assert!(
            out.starts_with(&format!("{web_ip} ")),
            "getent hosts {name}: {out}"
        );
    }
    let (code, out, err) = exec_out(
        &lab,
        "client",
        &["nslookup", "web.default.svc.cluster.local"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&web_ip), "{out}");
    assert!(out.contains("10.96.0.10"), "answered by kube-dns: {out}");

    // SRV for the named port only (`plain`'s port has no name); TCP answers too.
    assert_eq!(
        dig(&lab, &["SRV", "_http._tcp.web.default.svc.cluster.local"]),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        dig(
            &lab,
            &["+tcp", "SRV", "_http._tcp.web.default.svc.cluster.local"]
        ),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        dig_status(&lab, &["SRV", "_tcp.plain.default.svc.cluster.local"]).0,
        "NXDOMAIN"
    );

    // PTR of the ClusterIP.
    assert_eq!(
        dig(&lab, &["-x", &web_ip]),
        vec!["web.default.svc.cluster.local."]
    );

    // Headless: the ready pods' IPs, and a name per pod from hostname + subdomain.
    let db: BTreeSet<String> = ["db-0", "db-1"].iter().map(|p| pod_ip(&lab, p)).collect();
    let got: BTreeSet<String> = dig(&lab, &["db.default.svc.cluster.local"])
        .into_iter()
        .collect();
    assert_eq!(got, db);
    assert_eq!(
        dig(&lab, &["db-0.db.default.svc.cluster.local"]),
        vec![pod_ip(&lab, "db-0")]
    );
    assert_eq!(
        dig(&lab, &["SRV", "_pg._tcp.db.default.svc.cluster.local"]).len(),
        2
    );

    // ExternalName: a CNAME.
    assert_eq!(
        dig(&lab, &["CNAME", "search.default.svc.cluster.local"]),
        vec!["search.example.com."]
    );

    // NODATA vs NXDOMAIN.
    assert_eq!(
        dig_status(&lab, &["AAAA", "web.default.svc.cluster.local"]),
        ("NOERROR".to_string(), 0)
    );
    assert_eq!(
        dig_status(&lab, &["A", "nope.default.svc.cluster.local"]).0,
        "NXDOMAIN"
    );
    assert_eq!(
        dig_status(&lab, &["A", "default.svc.cluster.local"]),
        ("NOERROR".to_string(), 0)
    );

    // Pod records (verified: only for a pod that has the address).
    let client_ip = pod_ip(&lab, "client");
    assert_eq!(
        dig(
            &lab,
            &[&format!(
                "{}.default.pod.cluster.local",
                client_ip.replace('.', "-")
            )]
        ),
        vec![client_ip.clone()]
    );

    // A name outside the cluster (no upstream in the lab) fails at once, never hangs.
    let t = Instant::now();
    let (code, out, _) = exec_out(&lab, "client", &["getent", "hosts", "example.com"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(dig_status(&lab, &["example.com"]).0, "SERVFAIL");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // From a node (its processes reach ClusterIPs through the node's service routes).
    let out = lab.ok(&[
        "lab",
        "exec",
        "node1",
        "--",
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "@10.96.0.10",
        "web.default.svc.cluster.local",
    ]);
    assert_eq!(out.trim(), web_ip);

    // A service created now is answered within a second of the apply returning.
    lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n");
    let applied = Instant::now();
    let late_ip = cluster_ip(&lab, "default", "late");
    loop {
        let got = dig(&lab, &["late.default.svc.cluster.local"]);
        if got == vec![late_ip.clone()] {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(1),
            "late not answered within 1 s: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("new service answered {:?} after apply", applied.elapsed());
}
