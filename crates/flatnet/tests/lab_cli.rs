//! Tier 2: the CLI contract of design.md §3 beyond the basics: label, delete -f, get formats,
//! Deployments (spread, scale, replacement), lab exec on nodes and the external host, delete -f
//! of identity-only stubs.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, can_run};

const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web, tier: front}}\n    spec:\n      containers: [{name: s, ports: [{containerPort: 8080}]}]\n";

fn pods(lab: &Lab, ns: &str) -> Vec<serde_json::Value> {
    lab.get_json(&["pods", "-n", ns])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn deployments_spread_scale_and_replace_deleted_pods() {
    if !can_run("deployments_spread_scale_and_replace_deleted_pods") {
        return;
    }
    let lab = Lab::up("e2edeploy", &["--nodes", "2"]);
    lab.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    lab.apply(DEPLOY);
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    let p = pods(&lab, "shop");
    assert_eq!(p.len(), 4);
    for pod in &p {
        assert!(
            pod["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("web-"))
        );
        assert_eq!(
            pod["metadata"]["labels"]["tier"], "front",
            "pods carry the template's labels"
        );
    }
    let on = |node: &str| p.iter().filter(|x| x["spec"]["nodeName"] == node).count();
    assert_eq!(
        (on("node1"), on("node2")),
        (2, 2),
        "replicas are spread over the nodes"
    );
    // a deleted pod is replaced; the others keep running untouched
    let victim = p[0]["metadata"]["name"].as_str().expect("name").to_string();
    let others: Vec<String> = p[1..]
        .iter()
        .map(|x| {
            x["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    lab.ok(&["delete", "pod", &victim, "-n", "shop"]);
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    let p = pods(&lab, "shop");
    assert_eq!(p.len(), 4);
    assert!(p.iter().all(|x| x["metadata"]["name"] != victim.as_str()));
    for uid in &others {
        assert!(
            p.iter().any(|x| x["metadata"]["uid"] == uid.as_str()),
            "pod {uid} kept"
        );
    }
    // scaling down keeps the survivors running; scaling up adds
    lab.apply(&DEPLOY.replace("replicas: 4", "replicas: 2"));
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    let before: Vec<String> = pods(&lab, "shop")
        .iter()
        .map(|x| {
            x["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(before.len(), 2);
    lab.apply(&DEPLOY.replace("replicas: 4", "replicas: 3"));
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    let after = pods(&lab, "shop");
    assert_eq!(after.len(), 3);
    for uid in &before {
        assert!(after.iter().any(|x| x["metadata"]["uid"] == uid.as_str()));
    }
    // deleting the namespace deletes everything in it (the lab's own kube-system pods stay)
    let names = lab::Lab::new("e2edeploy").expect("lab name");
    let sandboxes: Vec<String> = after
        .iter()
        .filter_map(|x| x["metadata"]["name"].as_str())
        .map(|n| names.pod_netns("shop", n))
        .collect();
    lab.ok(&["delete", "namespace", "shop"]);
    assert!(
        lab.run(&["get", "deployment", "web", "-n", "shop"])
            .status
            .code()
            != Some(0)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::lab_namespaces("e2edeploy")
        .iter()
        .any(|n| sandboxes.contains(n))
    {
        assert!(Instant::now() < deadline, "pod sandboxes not removed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn label_delete_file_and_get_formats() {
    if !can_run("label_delete_file_and_get_formats") {
        return;
    }
    let lab = Lab::up("e2ecli", &["--nodes", "1"]);
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: a}}\nspec:\n  containers: [{name: c, command: [sleep, infinity]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec:\n  containers: [{name: c, command: [sleep, infinity]}]\n";
    lab.apply(manifest);
    assert!(
        lab.apply(manifest).contains("pod/a unchanged"),
        "re-applying the same manifest changes nothing"
    );
    lab.ok(&["label", "pod", "a", "role=db", "app-"]);
    let a = lab.get_json(&["pod", "a"]);
    assert_eq!(a["metadata"]["labels"]["role"], "db");
    assert!(a["metadata"]["labels"].get("app").is_none());
    let out = lab.run(&["label", "pod", "a", "bad key=x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad key"));
    let out = lab.run(&["label", "pod", "nope", "x=y"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // namespaces get the name label, as the API server does
    let ns = lab.get_json(&["namespace", "default"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "default"
    );
    // list output is a v1 List; yaml and wide work; -A adds the namespace column
    let list = lab.get_json(&["pods", "-A"]);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["apiVersion"], "v1");
    // The lab's own pods (ingress gateway, DNS) live in kube-system.
    let user_pods = list["items"].as_array().map(|items| {
        items
            .iter()
            .filter(|p| p["metadata"]["namespace"] != "kube-system")
            .count()
    });
    assert_eq!(user_pods, Some(2));
    assert!(
        lab.ok(&["get", "pod", "a", "-o", "yaml"])
            .contains("name: a")
    );
    assert!(lab.ok(&["get", "pods", "-A"]).starts_with("NAMESPACE"));
    assert!(lab.ok(&["get", "pods", "-o", "wide"]).contains("role=db"));
    // delete -f deletes what the file names and reports what it could not find
    let path = std::env::temp_dir().join(format!("flatnet-e2ecli-{}.yaml", std::process::id()));
    std::fs::write(&path, manifest.to_string() + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n  containers: [{name: c}]\n").expect("write");
    let out = lab.run(&["delete", "-f", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "not-found objects are reported, not failures"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));
    assert!(lab.run(&["get", "pod", "a"]).status.code() != Some(0));
    assert!(lab.run(&["get", "pod", "b"]).status.code() != Some(0));
}

/// `delete -f` reads only apiVersion, kind, metadata.name and metadata.namespace, as kubectl
/// does: a file of stubs (one of them in a `List`) deletes full objects, a name that does not
/// exist is reported while the others still go, and the exit code stays 0.
#[test]
fn delete_file_of_identity_stubs_deletes_and_reports_the_missing() {
    if !can_run("delete_file_of_identity_stubs_deletes_and_reports_the_missing") {
        return;
    }
    let lab = Lab::up("e2edelid", &["--nodes", "1"]);
    lab.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    lab.apply(DEPLOY);
    lab.apply(concat!(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: solo, namespace: shop}\nspec:\n  containers: [{name: c, command: [sleep, infinity]}]\n",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n",
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec:\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
    ));
    // Stubs: no spec at all, and a Service whose spec apply would refuse.
    let stubs = concat!(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\n",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: outdated}\n",
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n",
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: ghost, namespace: shop}\n",
    );
    // A second file, as kubectl takes `-f` more than once.
    let list = concat!(
        "kind: List\napiVersion: v1\nitems:\n",
        "- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny, namespace: shop}}\n",
        "- {apiVersion: networking.k8s.io/v1, kind: Ingress, metadata: {name: web, namespace: shop}}\n",
    );
    let path = std::env::temp_dir().join(format!("flatnet-e2edelid-{}.yaml", std::process::id()));
    let path2 = path.with_extension("list.yaml");
    std::fs::write(&path, stubs).expect("write");
    std::fs::write(&path2, list).expect("write");
    let out = lab.run(&[
        "delete",
        "-n",
        "shop",
        "-f",
        path.to_str().expect("path"),
        "-f",
        path2.to_str().expect("path"),
    ]);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&path2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("ghost") && stderr.contains("not found"),
        "{stderr}"
    );
    for (kind, name) in [
        ("pod", "solo"),
        ("service", "web"),
        ("deployment", "web"),
        ("networkpolicy", "deny"),
        ("ingress", "web"),
    ] {
        assert!(
            stdout.contains(&format!("{kind}/{name} deleted")),
            "{kind}/{name}: {stdout}"
        );
        let get = lab.run(&["get", kind, name, "-n", "shop"]);
        assert!(!get.status.success(), "{kind}/{name} still exists");
    }
    // The Deployment's pods go with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pods(&lab, "shop").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the Deployment's pods were not deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A document that names nothing is refused before anything is deleted.
    lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: keep, namespace: shop}\nspec:\n  containers: [{name: c, command: [sleep, infinity]}]\n");
    std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata: {name: keep, namespace: shop}\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: shop}\n").expect("write");
    let out = lab.run(&["delete", "-f", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("metadata.name: Required value"),
        "{stderr}"
    );
    assert!(
        lab.run(&["get", "pod", "keep", "-n", "shop"])
            .status
            .success()
    );
}

#[test]
fn nodes_and_external_reach_the_underlay_but_external_has_no_route_to_pods() {
    if !can_run("nodes_and_external_reach_the_underlay_but_external_has_no_route_to_pods") {
        return;
    }
    let lab = Lab::up("e2eext", &["--nodes", "2"]);
    lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec:\n  nodeName: node2\n  containers: [{name: s, ports: [{containerPort: 8080}]}]\n");
    let ip = lab.wait_ready("default", "w", Duration::from_secs(30));
    let ping = |target: &str, addr: &str| {
        lab.run(&[
            "lab", "exec", target, "--", "ping", "-c", "1", "-W", "1", addr,
        ])
        .status
        .success()
    };
    assert!(
        ping("external", "172.20.0.11"),
        "external reaches node1's InternalIP"
    );
    assert!(ping("node1", "172.20.0.12"), "node1 reaches node2");
    assert!(ping("node1", &ip), "a node reaches a pod on another node");
    assert!(
        !ping("external", &ip),
        "external has routes only to the underlay"
    );
    let out = lab.run(&["lab", "exec", "node9", "--", "true"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("node9"));
}
