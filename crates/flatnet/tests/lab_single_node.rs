//! Tier 2: the single-node lab, through the CLI only.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::{Lab, can_run, lab_namespaces};

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: server
    ports:
    - containerPort: 80
  - name: sidecar
    command: ["sleep", "infinity"]
    readinessProbe:
      exec:
        command: ["curl", "-sf", "-m", "1", "http://localhost:80/"]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: c
    command: ["sleep", "infinity"]
"#;

#[test]
fn lab_up_apply_get_exec_delete() {
    if !can_run("lab_up_apply_get_exec_delete") {
        return;
    }
    let lab = Lab::up("e2ebasic", &["--nodes", "1"]);
    let nodes = lab.get_json(&["nodes"]);
    let node = &nodes["items"][0];
    assert_eq!(node["metadata"]["name"], "node1");
    assert_eq!(node["status"]["addresses"][0]["address"], "172.20.0.11");
    assert_eq!(node["spec"]["podCIDR"], "10.244.0.0/24");

    let out = lab.apply(WEB);
    assert!(out.contains("pod/web created"), "{out}");
    let ip = lab.wait_ready("default", "web", Duration::from_secs(20));
    let client_ip = lab.wait_ready("default", "client", Duration::from_secs(20));
    assert_ne!(ip, client_ip);
    for a in [&ip, &client_ip] {
        let addr: std::net::Ipv4Addr = a.parse().expect("pod IP");
        assert_eq!(
            addr.octets()[..3],
            [10, 244, 0],
            "{a} is in node1's pod CIDR"
        );
    }
    let pod = lab.get_json(&["pod", "web"]);
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["hostIP"], "172.20.0.11");
    assert_eq!(pod["status"]["podIPs"][0]["ip"], ip);
    assert_eq!(pod["spec"]["nodeName"], "node1");
    assert!(
        pod["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );

    // exec passes stdout, stderr and the exit code through unchanged
    let out = lab.exec(
        "default",
        "client",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // the pod's own address is the one inside its namespace
    let out = lab.exec(
        "default",
        "client",
        &["ip", "-4", "-o", "addr", "show", "eth0"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{client_ip}/32")));

    // get of a missing object fails with "not found"
    let out = lab.run(&["get", "pod", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // deleting a pod tears its sandbox down and releases its IP
    let before = lab_namespaces("e2ebasic").len();
    lab.ok(&["delete", "pod", "client"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab_namespaces("e2ebasic").len() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "pod namespace not removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ipam = format!("/var/lib/flatnet/e2ebasic/nodes/node1/ipam/flatnet/{client_ip}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&ipam).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "IPAM record {ipam} not released"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn containers_share_localhost_other_pods_need_the_pod_ip() {
    if !can_run("containers_share_localhost_other_pods_need_the_pod_ip") {
        return;
    }
    let lab = Lab::up("e2elocal", &["--nodes", "1"]);
    lab.apply(WEB);
    // Ready only if the sidecar reached the server container on localhost (readiness probe).
    let ip = lab.wait_ready("default", "web", Duration::from_secs(20));
    lab.wait_ready("default", "client", Duration::from_secs(20));
    let out = lab.exec(
        "default",
        "web",
        &["curl", "-s", "-m", "2", "http://localhost:80/"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "web",
        "a container of the pod reaches another on localhost"
    );
    // another pod reaches it on the pod IP, never on its own localhost
    let out = lab.exec(
        "default",
        "client",
        &["curl", "-s", "-m", "2", &format!("http://{ip}/")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web");
    let out = lab.exec(
        "default",
        "client",
        &["curl", "-s", "-m", "2", "http://localhost:80/"],
    );
    assert!(
        !out.status.success(),
        "localhost of another pod is not the web pod"
    );
}

#[test]
fn invalid_manifest_is_rejected_and_nothing_is_applied() {
    if !can_run("invalid_manifest_is_rejected_and_nothing_is_applied") {
        return;
    }
    let lab = Lab::up("e2ebad", &["--nodes", "1"]);
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  containers: [{name: c, command: [sleep, infinity]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 70000}]\n";
    let path = std::env::temp_dir().join(format!("flatnet-bad-{}.yaml", std::process::id()));
    std::fs::write(&path, bad).expect("write");
    let out = lab.run(&["apply", "-f", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("containerPort") && err.contains("70000"),
        "error names field and value: {err}"
    );
    assert!(
        err.contains("document 2"),
        "error names the document: {err}"
    );
    let out = lab.run(&["get", "pod", "good"]);
    assert!(!out.status.success(), "nothing from the file was applied");
}

#[test]
fn lab_down_after_kill_9_leaves_nothing() {
    if !can_run("lab_down_after_kill_9_leaves_nothing") {
        return;
    }
    let lab = Lab::up("e2ecrash", &["--nodes", "1"]);
    lab.apply(WEB);
    lab.wait_ready("default", "web", Duration::from_secs(20));
    // kill -9 every process of the lab: etcd, kubelet, containers
    let pids = lab_pids("e2ecrash");
    assert!(
        pids.len() >= 4,
        "etcd, kubelet and containers run: {pids:?}"
    );
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = lab.run(&["lab", "down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lab_namespaces("e2ecrash").is_empty(),
        "namespaces left: {:?}",
        lab_namespaces("e2ecrash")
    );
    let alive: Vec<i32> = lab_pids("e2ecrash")
        .into_iter()
        .filter(|p| !zombie(*p))
        .collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    assert!(!std::path::Path::new("/run/flatnet/e2ecrash").exists());
    assert!(!std::path::Path::new("/var/lib/flatnet/e2ecrash").exists());
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        !mounts.contains("flatnet-e2ecrash-") && !mounts.contains("flatnet/e2ecrash"),
        "mounts left"
    );
    // and a second down is a no-op that succeeds
    assert!(lab.run(&["lab", "down"]).status.success());
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z"))
        .unwrap_or(true)
}

/// Processes of a lab: daemons carrying its marker, its etcd, anything in its namespaces.
fn lab_pids(lab: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let ns: Vec<(u64, u64)> = lab_namespaces(lab)
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| ns.contains(&(m.dev(), m.ino())))
            .unwrap_or(false);
        if cmd.contains(&format!("--lab={lab}"))
            || cmd.contains(&format!("/var/lib/flatnet/{lab}"))
            || in_ns
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn restarted_kubelet_adopts_running_pods_and_cleans_up_deleted_ones() {
    if !can_run("restarted_kubelet_adopts_running_pods_and_cleans_up_deleted_ones") {
        return;
    }
    let lab = Lab::up("e2ekubelet", &["--nodes", "1"]);
    lab.apply(WEB);
    let web_ip = lab.wait_ready("default", "web", Duration::from_secs(20));
    let client_ip = lab.wait_ready("default", "client", Duration::from_secs(20));
    let web_uid = lab.get_json(&["pod", "web"])["metadata"]["uid"].clone();
    lab.ok(&["lab", "stop", "kubelet/node1"]);
    // deleted while its kubelet is down: nobody runs CNI DEL now (the pod stays Terminating
    // until its kubelet is back, so delete must not wait for it, as with kubectl)
    lab.ok(&["delete", "pod", "client", "--wait=false"]);
    lab.ok(&["lab", "start", "kubelet/node1"]);
    let ipam = |ip: &str| {
        std::path::PathBuf::from(format!(
            "/var/lib/flatnet/e2ekubelet/nodes/node1/ipam/flatnet/{ip}"
        ))
    };
    // lab up also runs system pods (kube-dns, the ingress gateway): look at the client's own
    // namespace, not at a count.
    let client_netns = lab::Lab::new("e2ekubelet")
        .unwrap()
        .pod_netns("default", "client");
    let web_netns = lab::Lab::new("e2ekubelet")
        .unwrap()
        .pod_netns("default", "web");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ipam(&client_ip).exists() || lab_namespaces("e2ekubelet").contains(&client_netns) {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted pod's IP or namespace leaked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the restarted kubelet finished the graceful delete: the object is gone too
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.run(&["get", "pod", "client"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted kubelet never removed the deleted pod's object"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the surviving pod kept its sandbox, IP and process
    assert!(lab_namespaces("e2ekubelet").contains(&web_netns));
    assert!(ipam(&web_ip).exists());
    let pod = lab.get_json(&["pod", "web"]);
    assert_eq!(pod["metadata"]["uid"], web_uid);
    assert_eq!(pod["status"]["podIP"], web_ip.as_str());
    let out = lab.exec(
        "default",
        "web",
        &["curl", "-s", "-m", "2", "http://localhost:80/"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web");
}

#[test]
fn readiness_follows_the_probe_after_the_pod_started() {
    if !can_run("readiness_follows_the_probe_after_the_pod_started") {
        return;
    }
    let lab = Lab::up("e2eready", &["--nodes", "1"]);
    struct Flag(std::path::PathBuf);
    impl Drop for Flag {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let guard = Flag(std::env::temp_dir().join(format!("flatnet-e2eready-{}", std::process::id())));
    let flag = &guard.0;
    let _ = std::fs::remove_file(flag);
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    command: [sleep, infinity]\n    readinessProbe:\n      periodSeconds: 1\n      exec: {{command: [test, -f, {}]}}\n",
        flag.display()
    ));
    let ready = |lab: &Lab| {
        lab.get_json(&["pod", "p"])["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!ready(&lab), "not Ready while the probe fails");
    std::fs::write(flag, "").expect("flag");
    lab.wait_ready("default", "p", Duration::from_secs(10));
    std::fs::remove_file(flag).expect("remove flag");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready(&lab) {
        assert!(
            std::time::Instant::now() < deadline,
            "still Ready after the probe started failing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.get_json(&["pod", "p"])["status"]["phase"], "Running");
}
