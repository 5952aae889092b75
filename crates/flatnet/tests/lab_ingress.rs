//! Tier 2: the ingress gateway (issue 7) through the CLI, with curl from the lab's `external`
//! host (through the gateway's NodePorts and its LoadBalancer IP) and from a pod (through its
//! ClusterIP): host exact and wildcard rules, Exact/Prefix precedence, element-wise prefixes,
//! defaultBackend, ports by number and by name, IngressClass filtering, balancing over three
//! endpoints, 503 without endpoints, HTTP/1.1 keep-alive, HTTP/2 (prior knowledge and ALPN),
//! TLS with SNI from Secrets (self-signed certificates made here with openssl), forwarded
//! headers, and the Ingress status address.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Lab, can_run};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const GW_NS: &str = "kube-system";
const GW: &str = "ingress-gateway";

/// A Deployment of built-in responders (answer with the pod name) on TCP 8080 named `http`.
fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - name: s\n        ports:\n        - {{name: http, containerPort: 8080}}\n---\n"
    )
}

/// A Service `name` (selecting `app: NAME`) with port `port` named `web` -> `http`.
fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: web, port: {port}, targetPort: http}}\n---\n"
    )
}

/// A backend that echoes the request headers it got (python3's http.server), on 8080.
const ECHO: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = "".join("%s: %s\n" % (k.lower(), v) for k, v in self.headers.items())
        b = ("path: %s\n" % self.path + b).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"#;

fn echo_deployment() -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "echo"}},
            "template": {"metadata": {"labels": {"app": "echo"}},
                "spec": {"containers": [{"name": "echo", "command": ["python3", "-c", ECHO],
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}
    })
    .to_string()
}

/// A self-signed certificate for `host` (exact or `*.` wildcard), as (cert path, key path).
fn certificate(dir: &Path, file: &str, host: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

fn tls_secret(name: &str, crt: &Path, key: &Path) -> String {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name},
        "stringData": {
            "tls.crt": std::fs::read_to_string(crt).unwrap(),
            "tls.key": std::fs::read_to_string(key).unwrap(),
        }
    })
    .to_string()
}

fn backend(svc: &str, port: serde_json::Value) -> serde_json::Value {
    if port.is_string() {
        json!({"service": {"name": svc, "port": {"name": port}}})
    } else {
        json!({"service": {"name": svc, "port": {"number": port}}})
    }
}

fn path(kind: &str, p: &str, b: serde_json::Value) -> serde_json::Value {
    json!({"path": p, "pathType": kind, "backend": b})
}

/// The main Ingress: two TLS hosts, exact and wildcard hosts, Exact and Prefix paths, ports by
/// number and by name, a Service without endpoints.
fn routes_ingress() -> String {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "routes"},
        "spec": {
            "ingressClassName": "flatnet",
            "tls": [
                {"hosts": ["foo.bar.com"], "secretName": "foo-tls"},
                {"hosts": ["*.wild.test"], "secretName": "wild-tls"},
            ],
            "rules": [
                {"host": "a.example.test", "http": {"paths": [
                    path("Prefix", "/api", backend("api", json!(8080))),
                    path("Prefix", "/web", backend("web", json!("web"))),
                    path("Exact", "/exact", backend("exact", json!(80))),
                    path("Prefix", "/exact", backend("static", json!(80))),
                    path("Prefix", "/echo", backend("echo", json!(80))),
                ]}},
                {"host": "*.wild.test", "http": {"paths": [
                    path("Prefix", "/", backend("wild", json!(80))),
                ]}},
                {"host": "foo.bar.com", "http": {"paths": [
                    path("Prefix", "/", backend("static", json!("web"))),
                ]}},
                {"host": "idle.test", "http": {"paths": [
                    path("Prefix", "/", backend("idle", json!(80))),
                ]}},
            ],
        }
    })
    .to_string()
}

fn other_class_ingress() -> String {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "other-class"},
        "spec": {"ingressClassName": "some-invalid-class-name",
            "rules": [{"host": "other.test", "http": {"paths": [
                path("Prefix", "/", backend("web", json!(80))),
            ]}}]}
    })
    .to_string()
}

fn default_backend_ingress() -> String {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "catch-all"},
        "spec": {"defaultBackend": backend("fallback", json!(80))}
    })
    .to_string()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Gateway {
    node_ip: String,
    node_ip2: String,
    http_port: String,
    https_port: String,
    cluster_ip: String,
    lb_ip: String,
}

impl Gateway {
    fn find(lab: &Lab) -> Gateway {
        let svc = lab.get_json(&["svc", GW, "-n", GW_NS]);
        let port = |name: &str| {
            svc["spec"]["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p["nodePort"].as_u64())
                .unwrap_or_else(|| panic!("gateway service has a nodePort {name}: {svc}"))
                .to_string()
        };
        let node_ip = |n: &str| {
            let v = lab.get_json(&["node", n]);
            v["status"]["addresses"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        };
        Gateway {
            node_ip: node_ip("node1"),
            node_ip2: node_ip("node2"),
            http_port: port("http"),
            https_port: port("https"),
            cluster_ip: svc["spec"]["clusterIP"].as_str().unwrap().to_string(),
            lb_ip: svc["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .unwrap_or_else(|| panic!("gateway service has a LoadBalancer IP: {svc}"))
                .to_string(),
        }
    }
}

/// `curl -s` from `external` with a 5 s limit; `args` follow.
fn curl_external(lab: &Lab, args: &[&str]) -> Output {
    let mut a = vec![
        "lab",
        "exec",
        "external",
        "--",
        "curl",
        "-s",
        "--max-time",
        "5",
    ];
    a.extend_from_slice(args);
    lab.run(&a)
}

/// GET `http://ADDR:PORT/PATH` with `Host: host` from external; (status code, body).
fn get(lab: &Lab, addr: &str, port: &str, host: &str, path: &str) -> (String, String) {
    let url = format!("http://{addr}:{port}{path}");
    let h = format!("Host: {host}");
    let o = curl_external(lab, &["-H", &h, "-w", "\n%{http_code}", &url]);
    assert!(o.status.success(), "curl {host}{path}: {}", explain(&o));
    let t = text(&o);
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", &t));
    (code.to_string(), body.to_string())
}

/// Retries `f` until it returns Some, or fails after `timeout` with the last answer.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(t) => return t,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {timeout:?}; last: {last}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The pod-name prefix a body shows (`api-x1y2z` -> `api`).
fn app_of(body: &str) -> &str {
    body.rsplit_once('-').map_or(body, |(app, _)| app)
}

#[test]
fn ingress_gateway_serves_routes_tls_http2_and_status() {
    if !can_run("ingress_gateway_serves_routes_tls_http2_and_status") {
        return;
    }
    let lab = Lab::up("e2eing", &["--nodes", "2"]);
    let dir = std::env::temp_dir().join(format!("flatnet-e2eing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = RmDir(dir.clone());
    let (foo_crt, foo_key) = certificate(&dir, "foo", "foo.bar.com");
    let (wild_crt, wild_key) = certificate(&dir, "wild", "*.wild.test");

    let mut manifest = String::new();
    manifest += &deployment("web", 3);
    manifest += &service("web", 80);
    for app in ["api", "exact", "static", "wild", "fallback"] {
        manifest += &deployment(app, 1);
    }
    manifest += &service("api", 8080);
    for app in ["exact", "static", "wild", "fallback", "echo"] {
        manifest += &service(app, 80);
    }
    // A Service whose selector matches no pod: no endpoints.
    manifest += &service("idle", 80);
    manifest += "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  containers: [{name: c, ports: [{containerPort: 8080}]}]\n---\n";
    lab.apply(&manifest);
    lab.apply(&echo_deployment());
    lab.apply(&tls_secret("foo-tls", &foo_crt, &foo_key));
    lab.apply(&tls_secret("wild-tls", &wild_crt, &wild_key));
    lab.apply(&routes_ingress());
    lab.apply(&other_class_ingress());
    lab.ok(&["wait", "--converged", "--timeout", "90s"]);
    let gw = Gateway::find(&lab);
    let (ip, port) = (gw.node_ip.as_str(), gw.http_port.as_str());
    // Converged includes the Ingress status: the gateway Service's LoadBalancer IP, at once.
    let v = lab.get_json(&["ingress", "routes"]);
    assert_eq!(
        v["status"]["loadBalancer"]["ingress"][0]["ip"].as_str(),
        Some(gw.lb_ip.as_str()),
        "status right after wait --converged: {}",
        v["status"]
    );
    // The lab's IngressClass: flatnet, the cluster's default class.
    let classes = lab.ok(&["get", "ingressclass"]);
    assert!(
        classes
            .lines()
            .any(|l| l.starts_with("flatnet ") && l.contains("flatnet.io/ingress-gateway")),
        "{classes}"
    );

    // Routing by host and path, through node1's NodePort.
    let started = Instant::now();
    eventually("the first route answers", WAIT, || {
        match get(&lab, ip, port, "a.example.test", "/api/v1/items") {
            (c, b) if c == "200" && app_of(&b) == "api" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!(
        "first routed answer {} ms after convergence",
        started.elapsed().as_millis()
    );
    let cases = [
        // host, path, status, app
        ("a.example.test", "/api", "200", "api"), // port by number
        ("a.example.test", "/api/", "200", "api"),
        ("A.Example.Test", "/api/x", "200", "api"), // host is case-insensitive
        ("a.example.test", "/apix", "404", ""),     // element-wise, not a string prefix
        ("a.example.test", "/web/index.html", "200", "web"), // port by name
        ("a.example.test", "/exact", "200", "exact"), // Exact beats Prefix of equal length
        ("a.example.test", "/exact/", "200", "static"),
        ("a.example.test", "/exact/more", "200", "static"),
        ("a.example.test", "/nothing", "404", ""), // no rule, no defaultBackend
        ("x.wild.test", "/any", "200", "wild"),    // wildcard: one label
        ("y.x.wild.test", "/any", "404", ""),      // ... not two
        ("wild.test", "/any", "404", ""),          // ... not zero
        ("foo.bar.com", "/", "200", "static"),
        ("other.test", "/", "404", ""), // another IngressClass: ignored
        ("unknown.test", "/", "404", ""),
        ("idle.test", "/", "503", ""), // no ready endpoints
    ];
    for (host, path, code, app) in cases {
        let (c, b) = get(&lab, ip, port, host, path);
        assert_eq!(c, code, "{host}{path}: body {b:?}");
        if !app.is_empty() {
            assert_eq!(app_of(&b), app, "{host}{path}: body {b:?}");
        }
    }
    // The same through node2's NodePort.
    let (c, b) = get(&lab, &gw.node_ip2, port, "a.example.test", "/api");
    assert_eq!((c.as_str(), app_of(&b)), ("200", "api"), "via node2");

    // Balancing over the three web endpoints, and keep-alive: 30 requests on one connection.
    let url = format!("http://{ip}:{port}/web/x");
    let mut args = vec!["-v", "-H", "Host: a.example.test", "-w", "\n"];
    let urls = vec![url.as_str(); 30];
    args.extend(urls);
    let o = curl_external(&lab, &args);
    assert!(o.status.success(), "30 requests: {}", explain(&o));
    let pods: Vec<String> = text(&o).lines().map(str::to_string).collect();
    assert_eq!(pods.len(), 30, "30 answers: {pods:?}");
    assert!(pods.iter().all(|p| app_of(p) == "web"), "{pods:?}");
    let distinct: BTreeSet<&String> = pods.iter().collect();
    assert_eq!(distinct.len(), 3, "all three web pods answer: {pods:?}");
    let log = String::from_utf8_lossy(&o.stderr);
    let connects = log.matches("Connected to").count();
    assert_eq!(connects, 1, "one TCP connection for 30 requests: {log}");
    assert!(log.contains("Re-using existing connection"), "{log}");

    // Forwarded headers and the Host header reach the backend unchanged.
    let (c, b) = get(&lab, ip, port, "a.example.test", "/echo/x?q=1");
    assert_eq!(c, "200", "{b}");
    assert!(b.contains("path: /echo/x?q=1\n"), "{b}");
    assert!(b.contains("host: a.example.test\n"), "{b}");
    assert!(b.contains("x-forwarded-proto: http\n"), "{b}");
    assert!(b.contains("x-forwarded-for: "), "{b}");

    // HTTP/2 with prior knowledge on the cleartext port.
    let o = curl_external(
        &lab,
        &[
            "--http2-prior-knowledge",
            "-H",
            "Host: a.example.test",
            "-w",
            "\n%{http_version}",
            &format!("http://{ip}:{port}/api"),
        ],
    );
    let t = text(&o);
    let (body, version) = t.rsplit_once('\n').unwrap_or(("", ""));
    assert_eq!(
        (app_of(body), version),
        ("api", "2"),
        "h2c: {}",
        explain(&o)
    );

    // TLS: SNI picks the certificate (each verifies against its own CA file only), ALPN h2.
    let https = gw.https_port.as_str();
    for (host, crt, app) in [
        ("foo.bar.com", &foo_crt, "static"),
        ("x.wild.test", &wild_crt, "wild"),
    ] {
        let resolve = format!("{host}:{https}:{ip}");
        let o = curl_external(
            &lab,
            &[
                "--http2",
                "--cacert",
                crt.to_str().unwrap(),
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_version}",
                &format!("https://{host}:{https}/"),
            ],
        );
        let t = text(&o);
        let (body, version) = t.rsplit_once('\n').unwrap_or(("", ""));
        assert_eq!(
            (app_of(body), version),
            (app, "2"),
            "https {host}: {}",
            explain(&o)
        );
    }
    // The wrong CA file fails verification: the certificate really is chosen per name.
    let resolve = format!("foo.bar.com:{https}:{ip}");
    let o = curl_external(
        &lab,
        &[
            "--cacert",
            wild_crt.to_str().unwrap(),
            "--resolve",
            &resolve,
            &format!("https://foo.bar.com:{https}/"),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(60),
        "certificate mismatch: {}",
        explain(&o)
    );
    // HTTP/1.1 over TLS, with the forwarded proto.
    let resolve = format!("a.wild.test:{https}:{ip}");
    let o = curl_external(
        &lab,
        &[
            "--http1.1",
            "--cacert",
            wild_crt.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version}",
            &format!("https://a.wild.test:{https}/"),
        ],
    );
    let t = text(&o);
    assert!(t.ends_with("\n1.1"), "https http/1.1: {}", explain(&o));

    // Ingress status: the gateway Service's LoadBalancer IP, only on our class.
    let status_ip = eventually("status address of routes", WAIT, || {
        let v = lab.get_json(&["ingress", "routes"]);
        v["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| v["status"].to_string())
    });
    assert_eq!(status_ip, gw.lb_ip);
    // kubectl's table: NAME CLASS HOSTS ADDRESS PORTS AGE.
    let table = lab.ok(&["get", "ingress"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("routes "))
        .unwrap_or_else(|| panic!("{table}"));
    for want in [
        "flatnet",
        "a.example.test,*.wild.test",
        gw.lb_ip.as_str(),
        "80, 443",
    ] {
        assert!(row.contains(want), "{want} in {row:?}");
    }
    assert!(table.starts_with("NAME"), "{table}");
    let other = lab.get_json(&["ingress", "other-class"]);
    assert!(
        other["status"]["loadBalancer"].get("ingress").is_none(),
        "another class gets no address: {other}"
    );

    // Through the LoadBalancer IP from external.
    let (c, b) = eventually("LoadBalancer IP answers", WAIT, || {
        let url = format!("http://{}/api", gw.lb_ip);
        let o = curl_external(
            &lab,
            &["-H", "Host: a.example.test", "-w", "\n%{http_code}", &url],
        );
        let t = text(&o);
        match t.rsplit_once('\n') {
            Some((b, c)) if o.status.success() => Ok((c.to_string(), b.to_string())),
            _ => Err(explain(&o)),
        }
    });
    assert_eq!((c.as_str(), app_of(&b)), ("200", "api"));

    // From a pod, through the gateway's ClusterIP; the pod's IP is in X-Forwarded-For.
    let client_ip = lab.wait_ready("default", "client", WAIT);
    let url = format!("http://{}/echo/from-pod", gw.cluster_ip);
    let o = lab.exec(
        "default",
        "client",
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "-H",
            "Host: a.example.test",
            &url,
        ],
    );
    assert!(o.status.success(), "from pod: {}", explain(&o));
    let b = text(&o);
    assert!(
        b.contains(&format!("x-forwarded-for: {client_ip}\n")),
        "{b}"
    );

    // A defaultBackend catches what matches no rule; classless Ingresses are ours.
    lab.apply(&default_backend_ingress());
    eventually("defaultBackend serves unknown hosts", WAIT, || {
        match get(&lab, ip, port, "unknown.test", "/") {
            (c, b) if c == "200" && app_of(&b) == "fallback" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (c, b) = get(&lab, ip, port, "a.example.test", "/nothing");
    assert_eq!((c.as_str(), app_of(&b)), ("200", "fallback"));
    let (c, b) = get(&lab, ip, port, "other.test", "/");
    assert_eq!(
        (c.as_str(), app_of(&b)),
        ("200", "fallback"),
        "other class still ignored"
    );

    // Endpoints follow the store: scale web to one replica, then the idle service gets one.
    lab.apply(&deployment("web", 1));
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    eventually("web scaled to one endpoint", WAIT, || {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let (c, b) = get(&lab, ip, port, "a.example.test", "/web");
            if c != "200" {
                return Err(format!("{c} {b}"));
            }
            seen.insert(b);
        }
        if seen.len() == 1 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    lab.apply(&deployment("idle", 1));
    lab.ok(&["wait", "--converged", "--timeout", "60s"]);
    eventually("idle gets an endpoint", WAIT, || {
        match get(&lab, ip, port, "idle.test", "/") {
            (c, b) if c == "200" && app_of(&b) == "idle" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}
