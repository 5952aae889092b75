//! Tier 2: the upstream NetworkPolicy e2e suite (`crates/plan/tests/netpol_cases/`, format in
//! its README) replayed on a lab through the CLI only: `apply`, `delete`, `label`,
//! `wait --converged`, `connectivity -o json` with real packets and with `--static`, and
//! `policy explain`. Every probe compares full 9x9 matrices: real against the file, static
//! against the file, and real against static.
//!
//! One 3-node lab per group of cases (pods spread so most pairs cross nodes), with a cleanup
//! between cases (every policy deleted, labels restored, `wait --converged`). SCTP probes:
//! when the kernel has no SCTP, `connectivity` must exit non-zero with a clear message, and
//! the static matrix is still checked. All mismatches of a group are reported together.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Lab, can_run};
use netpol::cases::{self, Case, LabelTarget, NAMESPACES, PORTS, Probe, diff_table, pod_names};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const NODES: usize = 3;

/// The x/y/z model: namespaces labelled `ns: <name>`, pods labelled `pod: <name>` serving 80
/// and 81 on TCP and UDP (the built-in responder) and declaring them on SCTP too (in a second
/// container: the lab's responder does not serve SCTP), ports named `serve-<port>-<proto>`.
/// Pod k of the 9 runs on node k mod 3.
fn model_manifest() -> String {
    let mut s = String::new();
    for ns in NAMESPACES {
        s += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{ns}\"\n  labels: {{ns: \"{ns}\"}}\n---\n"
        );
    }
    for (k, key) in pod_names().iter().enumerate() {
        let (ns, pod) = key.split_once('/').expect("ns/pod");
        let ports = |protos: &[&str]| {
            let mut out = String::new();
            for proto in protos {
                for port in PORTS {
                    out += &format!(
                        "    - {{name: serve-{port}-{}, containerPort: {port}, protocol: {proto}}}\n",
                        proto.to_lowercase()
                    );
                }
            }
            out
        };
        s += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: \"{ns}\"\n  labels: {{pod: {pod}}}\nspec:\n  nodeName: node{}\n  containers:\n  - name: serve\n    ports:\n{}  - name: sctp\n    command: [sleep, infinity]\n    ports:\n{}---\n",
            k % NODES + 1,
            ports(&["TCP", "UDP"]),
            ports(&["SCTP"]),
        );
    }
    s
}

/// Whether this kernel can open SCTP sockets (checked here, independently of the CLI).
fn kernel_has_sctp() -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .is_ok()
}

/// A lab with the model, and what the cleanup restores.
struct Model {
    lab: Lab,
    ips: BTreeMap<String, Ipv4Addr>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

impl Model {
    fn up(name: &str) -> Model {
        let t = Instant::now();
        let lab = Lab::up(name, &["--nodes", &NODES.to_string()]);
        lab.apply(&model_manifest());
        let mut ips = BTreeMap::new();
        for key in pod_names() {
            let (ns, pod) = key.split_once('/').expect("ns/pod");
            let ip = lab.wait_ready(ns, pod, WAIT);
            ips.insert(key, ip.parse().expect("pod IP"));
        }
        lab.ok(&["wait", "--converged", "--timeout", "60s"]);
        let mut m = Model {
            lab,
            ips,
            ns_labels: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
        };
        m.ns_labels = NAMESPACES
            .iter()
            .map(|ns| (ns.to_string(), labels_of(&m.lab.get_json(&["ns", ns]))))
            .collect();
        m.pod_labels = pod_names()
            .into_iter()
            .map(|key| {
                let (ns, pod) = key.split_once('/').expect("ns/pod");
                let l = labels_of(&m.lab.get_json(&["pod", pod, "-n", ns]));
                (key, l)
            })
            .collect();
        eprintln!("{name}: model up in {:?}", t.elapsed());
        m
    }

    fn ip_of(&self, key: &str) -> Option<Ipv4Addr> {
        self.ips.get(key).copied()
    }

    /// `flatnet apply` of NetworkPolicy manifests with `${ns/pod}` replaced.
    fn apply_policies(&self, docs: &[Value]) -> Result<(), String> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for d in docs {
            let mut d = d.clone();
            cases::substitute(&mut d, &|k| self.ip_of(k))?;
            text += &format!("{d}\n---\n");
        }
        let out = self.lab.try_apply(&text);
        if !out.status.success() {
            return Err(format!(
                "apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn policies(&self) -> Vec<(String, String)> {
        let v = self.lab.get_json(&["networkpolicy", "-A"]);
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["metadata"]["namespace"].as_str()?.to_string(),
                    p["metadata"]["name"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// `flatnet delete networkpolicy NAME -n NS` for `ns/name`, or every policy for `*`.
    fn delete_policies(&self, which: &[String]) -> Result<(), String> {
        let mut targets = Vec::new();
        for w in which {
            if w == "*" {
                targets.extend(self.policies());
            } else {
                let (ns, name) = w
                    .split_once('/')
                    .ok_or_else(|| format!("delete: {w:?} is not namespace/name"))?;
                targets.push((ns.to_string(), name.to_string()));
            }
        }
        for (ns, name) in targets {
            let out = self.lab.run(&["delete", "networkpolicy", &name, "-n", &ns]);
            if !out.status.success() {
                return Err(format!(
                    "delete networkpolicy {ns}/{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    /// `flatnet label` with `changes` (`key=value`, `key-`).
    fn label(&self, target: &LabelTarget, changes: &[String]) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&str> = vec!["label"];
        match target {
            LabelTarget::Namespace(ns) => args.extend(["namespace", ns.as_str()]),
            LabelTarget::Pod(ns, pod) => args.extend(["pod", pod.as_str(), "-n", ns.as_str()]),
        }
        args.extend(changes.iter().map(String::as_str));
        let out = self.lab.run(&args);
        if !out.status.success() {
            return Err(format!(
                "flatnet {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn wait_converged(&self) -> Result<(), String> {
        let out = self.lab.run(&["wait", "--converged", "--timeout", "60s"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "wait --converged: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Back to the model: no policies, the original labels.
    fn cleanup(&self) -> Result<(), String> {
        self.delete_policies(&["*".to_string()])?;
        let restore = |target: LabelTarget,
                       current: BTreeMap<String, String>,
                       orig: &BTreeMap<String, String>| {
            let mut changes = Vec::new();
            for (k, v) in &current {
                match orig.get(k) {
                    None => changes.push(format!("{k}-")),
                    Some(o) if o != v => changes.push(format!("{k}={o}")),
                    Some(_) => {}
                }
            }
            for (k, o) in orig {
                if !current.contains_key(k) {
                    changes.push(format!("{k}={o}"));
                }
            }
            self.label(&target, &changes)
        };
        for (ns, orig) in &self.ns_labels {
            let current = labels_of(&self.lab.get_json(&["ns", ns]));
            restore(LabelTarget::Namespace(ns.clone()), current, orig)?;
        }
        for (key, orig) in &self.pod_labels {
            let (ns, pod) = key.split_once('/').expect("ns/pod");
            let current = labels_of(&self.lab.get_json(&["pod", pod, "-n", ns]));
            restore(LabelTarget::Pod(ns.into(), pod.into()), current, orig)?;
        }
        self.wait_converged()
    }

    /// `flatnet connectivity -o json` (plus `--static`), parsed and checked for the contract's
    /// shape; returns the matrix as rows of `X`/`.`.
    fn connectivity(&self, probe: &Probe, is_static: bool) -> Result<Vec<String>, String> {
        let port = probe.port.to_string();
        let mut args = vec![
            "connectivity",
            "--port",
            &port,
            "--protocol",
            &probe.protocol,
            "-o",
            "json",
        ];
        if is_static {
            args.push("--static");
        }
        let out = self.lab.run(&args);
        if !out.status.success() {
            return Err(format!(
                "flatnet {args:?} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("connectivity -o json is not JSON: {e}"))?;
        check_shape(&v, probe, is_static)?;
        let matrix: Vec<Vec<u8>> =
            serde_json::from_value(v["matrix"].clone()).map_err(|e| format!("matrix: {e}"))?;
        Ok(cases::rows(&matrix))
    }

    /// `flatnet policy explain SRC DST -o json`: whether it says allowed.
    fn explain_allows(&self, src: &str, dst: &str, probe: &Probe) -> Result<bool, String> {
        let port = probe.port.to_string();
        let args = [
            "policy",
            "explain",
            src,
            dst,
            "--port",
            &port,
            "--protocol",
            &probe.protocol,
            "-o",
            "json",
        ];
        let out = self.lab.run(&args);
        if !out.status.success() {
            return Err(format!(
                "flatnet {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("policy explain -o json is not JSON: {e}"))?;
        v["allowed"]
            .as_bool()
            .ok_or_else(|| format!("policy explain: no `allowed` in {v}"))
    }
}

/// The JSON document has exactly the contract's keys, the model's pods in order, 1/0 cells.
fn check_shape(v: &Value, probe: &Probe, is_static: bool) -> Result<(), String> {
    let keys: Vec<&str> = v
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    if sorted != ["matrix", "pods", "port", "protocol", "static"] {
        return Err(format!("connectivity JSON keys are {keys:?}"));
    }
    let want = json!({
        "port": probe.port,
        "protocol": probe.protocol.to_uppercase(),
        "static": is_static,
        "pods": pod_names(),
    });
    for k in ["port", "protocol", "static", "pods"] {
        if v[k] != want[k] {
            return Err(format!(
                "connectivity JSON {k}: {} (want {})",
                v[k], want[k]
            ));
        }
    }
    let n = pod_names().len();
    let ok = v["matrix"].as_array().is_some_and(|rows| {
        rows.len() == n
            && rows.iter().all(|r| {
                r.as_array().is_some_and(|c| {
                    c.len() == n && c.iter().all(|x| *x == json!(0) || *x == json!(1))
                })
            })
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "connectivity JSON matrix is not {n}x{n} of 0/1: {}",
            v["matrix"]
        ))
    }
}

/// Replays one case; returns the failures (empty: the case passed).
fn replay(m: &Model, case: &Case, sctp: bool) -> Result<Vec<String>, String> {
    let mut failures = Vec::new();
    m.apply_policies(&case.policies)?;
    for (si, step) in case.steps.iter().enumerate() {
        m.apply_policies(&step.apply)?;
        m.delete_policies(&step.delete)?;
        for l in &step.label {
            let changes: Vec<String> = l.labels.clone();
            l.changes()?;
            m.label(&l.target()?, &changes)?;
        }
        m.wait_converged()?;
        for probe in &step.probes {
            probe.check_expect()?;
            let what = format!(
                "{}: step {si}, {}/{}",
                case.name, probe.protocol, probe.port
            );
            let stat = m.connectivity(probe, true);
            match &stat {
                Ok(s) if *s != probe.expect => failures.push(format!(
                    "{what}: --static disagrees with the file\n{}",
                    diff_table(("expected", &probe.expect), ("static", s))
                )),
                Ok(_) => {}
                Err(e) => failures.push(format!("{what}: --static: {e}")),
            }
            if probe.protocol.eq_ignore_ascii_case("SCTP") && !sctp {
                let port = probe.port.to_string();
                let out = m.lab.run(&[
                    "connectivity",
                    "--port",
                    &port,
                    "--protocol",
                    "SCTP",
                    "-o",
                    "json",
                ]);
                let err = String::from_utf8_lossy(&out.stderr);
                if out.status.success() || !err.contains("SCTP is not supported by this kernel") {
                    failures.push(format!(
                        "{what}: without kernel SCTP, connectivity must fail clearly; exit {:?}, stderr {err:?}",
                        out.status.code()
                    ));
                }
                if !out.stdout.is_empty() {
                    failures.push(format!("{what}: a failed connectivity printed a matrix"));
                }
                continue;
            }
            match m.connectivity(probe, false) {
                Ok(real) => {
                    if real != probe.expect {
                        failures.push(format!(
                            "{what}: real probes disagree with the file\n{}",
                            diff_table(("expected", &probe.expect), ("probed", &real))
                        ));
                    }
                    if let Ok(s) = &stat
                        && *s != real
                    {
                        failures.push(format!(
                            "{what}: real and --static disagree\n{}",
                            diff_table(("static", s), ("probed", &real))
                        ));
                    }
                }
                Err(e) => failures.push(format!("{what}: {e}")),
            }
            // policy explain agrees with the matrix on x/b -> x/a and on y/c -> x/a by IP.
            let names = pod_names();
            for (i, j, src) in [
                (1, 0, names[1].clone()),
                (5, 0, m.ips[&names[5]].to_string()),
            ] {
                let want = probe.expect[i].as_bytes()[j] == b'X';
                match m.explain_allows(&src, &names[j], probe) {
                    Ok(got) if got != want => failures.push(format!(
                        "{what}: policy explain {src} {} says allowed={got}, the file says {want}",
                        names[j]
                    )),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{what}: {e}")),
                }
            }
        }
    }
    Ok(failures)
}

/// Runs the cases whose file name starts with one of `prefixes` on one lab.
fn run_group(lab_name: &str, prefixes: &[&str]) {
    if !can_run(lab_name) {
        return;
    }
    let files: Vec<PathBuf> = cases::case_files()
        .expect("case files")
        .into_iter()
        .filter(|f| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            prefixes.iter().any(|p| name.starts_with(p))
        })
        .collect();
    assert_eq!(
        files.len(),
        prefixes.len(),
        "one file per prefix: {files:?}"
    );
    let sctp = kernel_has_sctp();
    let m = Model::up(lab_name);
    let mut failed = Vec::new();
    let mut passed = 0;
    for f in &files {
        let t = Instant::now();
        let case = cases::load(f).expect("case file");
        let result = replay(&m, &case, sctp).and_then(|fails| {
            m.cleanup()?;
            Ok(fails)
        });
        let file = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        match result {
            Ok(fails) if fails.is_empty() => {
                passed += 1;
                eprintln!("PASS {file} ({:?})", t.elapsed());
            }
            Ok(fails) => {
                eprintln!("FAIL {file} ({:?})", t.elapsed());
                failed.push(format!("{file}:\n{}", fails.join("\n")));
            }
            Err(e) => {
                eprintln!("FAIL {file} ({:?}): {e}", t.elapsed());
                failed.push(format!("{file}: {e}"));
                // leave the model clean for the next case whatever happened
                if let Err(e) = m.cleanup() {
                    failed.push(format!("cleanup after {file}: {e}"));
                }
            }
        }
    }
    eprintln!("{lab_name}: {passed} of {} cases passed", files.len());
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failed.len(),
        files.len(),
        failed.join("\n\n")
    );
}

fn prefixes(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("{n:02}-")).collect()
}

fn group(lab_name: &str, range: std::ops::RangeInclusive<u32>) {
    let p = prefixes(range);
    let refs: Vec<&str> = p.iter().map(String::as_str).collect();
    run_group(lab_name, &refs);
}

#[test]
fn netpol_cases_01_to_13_selectors() {
    group("netpola", 1..=13);
}

#[test]
fn netpol_cases_14_to_26_ports_updates_and_egress() {
    group("netpolb", 14..=26);
}

#[test]
fn netpol_cases_27_to_39_cidrs_precedence_and_sctp() {
    group("netpolc", 27..=39);
}

#[test]
fn netpol_cases_40_to_51_udp_sctp_and_flatnet() {
    group("netpold", 40..=51);
}

#[test]
fn every_case_file_is_in_a_group() {
    let files = cases::case_files().expect("case files");
    let all = prefixes(1..=51);
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            all.iter().any(|p| name.starts_with(p.as_str())),
            "{name} is in no group: add it to a test"
        );
    }
    assert_eq!(files.len(), all.len(), "{files:?}");
}
