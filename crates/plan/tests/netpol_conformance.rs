//! The upstream NetworkPolicy e2e cases (kubernetes/kubernetes
//! `test/e2e/network/netpol/network_policy.go`), evaluated statically.
//!
//! Each file in `netpol_cases/` (format: `netpol_cases/README.md`) gives policies, changes
//! between steps and the expected 9x9 reachability matrices. For every probe this test
//! checks that (1) the upstream-style `reachability` operations produce the `expect` rows
//! (so the data file is consistent) and (2) the compiled policy's matrix equals them.
//! All mismatches of all files are reported at once, each as a readable table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use model::NetworkPolicy;
use plan::policy::{Cluster, NamedPort, NamespaceInfo, PodInfo, PodRef, Protocol};
use serde::Deserialize;
use serde_json::Value;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    #[serde(default)]
    policies: Vec<Value>,
    steps: Vec<Step>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    apply: Vec<Value>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    label: Vec<LabelChange>,
    probes: Vec<Probe>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LabelChange {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    pod: Option<String>,
    labels: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Probe {
    port: u16,
    protocol: String,
    #[serde(default)]
    reachability: Vec<String>,
    expect: Vec<String>,
}

/// The upstream model: see `netpol_cases/README.md`.
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
                BTreeMap::from([
                    ("ns".to_string(), ns.to_string()),
                    ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
                ]),
            ));
            for (pi, name) in PODS.into_iter().enumerate() {
                let mut p = PodInfo::new(ns, name, BTreeMap::from([("pod".into(), name.into())]));
                p.ip = Some(Ipv4Addr::new(10, 244, ni as u8 + 1, 10 + pi as u8));
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in [80, 81] {
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

    fn refs(&self) -> Vec<PodRef> {
        self.pods
            .iter()
            .map(|p| PodRef::new(&p.namespace, &p.name))
            .collect()
    }

    /// `${ns/pod}` in any string becomes that pod's address.
    fn substitute(&self, v: &mut Value) -> Result<(), String> {
        match v {
            Value::String(s) => {
                while let Some(start) = s.find("${") {
                    let end = s[start..]
                        .find('}')
                        .ok_or_else(|| format!("unterminated placeholder in {s:?}"))?;
                    let key = &s[start + 2..start + end];
                    let ip = self
                        .pods
                        .iter()
                        .find(|p| p.key() == key)
                        .and_then(|p| p.ip)
                        .ok_or_else(|| format!("placeholder ${{{key}}} names no pod"))?;
                    s.replace_range(start..start + end + 1, &ip.to_string());
                }
                Ok(())
            }
            Value::Array(a) => a.iter_mut().try_for_each(|v| self.substitute(v)),
            Value::Object(m) => m.values_mut().try_for_each(|v| self.substitute(v)),
            _ => Ok(()),
        }
    }

    /// Creates or replaces policies, through the same manifest parser (and validation) as
    /// `flatnet apply`.
    fn apply(&mut self, docs: &[Value], source: &str) -> Result<(), String> {
        let mut docs = docs.to_vec();
        for d in &mut docs {
            self.substitute(d)?;
        }
        let text = docs
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let objects = model::parse_manifests(&text, source).map_err(|e| e.to_string())?;
        for o in objects {
            let p: NetworkPolicy = o.typed().map_err(|e| e.to_string())?;
            self.policies.insert(o.display_name(), p);
        }
        Ok(())
    }

    fn change(&mut self, step: &Step, source: &str) -> Result<(), String> {
        self.apply(&step.apply, source)?;
        for d in &step.delete {
            if d == "*" {
                self.policies.clear();
            } else if self.policies.remove(d).is_none() {
                return Err(format!("delete: no policy {d}"));
            }
        }
        for l in &step.label {
            let labels = match (&l.namespace, &l.pod) {
                (Some(ns), None) => self
                    .namespaces
                    .iter_mut()
                    .find(|n| &n.name == ns)
                    .map(|n| &mut n.labels),
                (None, Some(pod)) => self
                    .pods
                    .iter_mut()
                    .find(|p| &p.key() == pod)
                    .map(|p| &mut p.labels),
                _ => return Err(format!("label: give exactly one of namespace, pod: {l:?}")),
            }
            .ok_or_else(|| format!("label: no such object: {l:?}"))?;
            for kv in &l.labels {
                match (kv.split_once('='), kv.strip_suffix('-')) {
                    (Some((k, v)), _) => {
                        labels.insert(k.to_string(), v.to_string());
                    }
                    (None, Some(k)) => {
                        labels.remove(k);
                    }
                    _ => return Err(format!("label: expected key=value or key-, got {kv:?}")),
                }
            }
        }
        Ok(())
    }

    fn matrix(&self, port: u16, protocol: Protocol) -> Result<Vec<String>, String> {
        let cluster = Cluster::new(
            self.namespaces.clone(),
            self.pods.clone(),
            self.policies.values().cloned().collect(),
        )
        .map_err(|e| e.to_string())?;
        let m = cluster
            .compile()
            .matrix(&self.refs(), port, protocol)
            .map_err(|e| e.to_string())?;
        Ok(m.iter()
            .map(|row| {
                row.iter()
                    .map(|&c| if c == 1 { 'X' } else { '.' })
                    .collect()
            })
            .collect())
    }
}

fn pod_names() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// Upstream's `Reachability` operations (start all true, then `ExpectPeer` and friends),
/// with loopback allowed as `AllowLoopback` does.
fn render(ops: &[String]) -> Result<Vec<String>, String> {
    let names = pod_names();
    let matches = |peer: &str, pod: &str| {
        let (pns, pp) = peer.split_once('/').unwrap_or((peer, "*"));
        let (ns, p) = pod.split_once('/').unwrap_or((pod, ""));
        (pns == "*" || pns == ns) && (pp == "*" || pp == p)
    };
    let mut m = vec![vec![true; 9]; 9];
    for op in ops {
        let (f, rest) = op
            .split_once('(')
            .ok_or_else(|| format!("bad operation {op:?}"))?;
        let args: Vec<&str> = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("bad operation {op:?}"))?
            .split(',')
            .map(str::trim)
            .collect();
        let val = match args.last() {
            Some(&"true") => true,
            Some(&"false") => false,
            _ => return Err(format!("operation {op:?} must end with true or false")),
        };
        let set =
            |m: &mut Vec<Vec<bool>>, from: &dyn Fn(&str) -> bool, to: &dyn Fn(&str) -> bool| {
                for (i, a) in names.iter().enumerate() {
                    for (j, b) in names.iter().enumerate() {
                        if from(a) && to(b) {
                            m[i][j] = val;
                        }
                    }
                }
            };
        match (f, args.as_slice()) {
            ("ExpectPeer", [from, to, _]) => {
                set(&mut m, &|p| matches(from, p), &|p| matches(to, p))
            }
            ("Expect", [from, to, _]) => set(&mut m, &|p| p == *from, &|p| p == *to),
            ("ExpectAllIngress", [to, _]) => set(&mut m, &|_| true, &|p| p == *to),
            ("ExpectAllEgress", [from, _]) => set(&mut m, &|p| p == *from, &|_| true),
            _ => return Err(format!("unknown operation {op:?}")),
        }
    }
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = true;
    }
    Ok(m.iter()
        .map(|r| r.iter().map(|&b| if b { 'X' } else { '.' }).collect())
        .collect())
}

/// Expected and actual side by side, mismatching cells marked with `!`.
fn diff_table(expect: &[String], actual: &[String]) -> String {
    let names = pod_names();
    let mut s = String::from("       expected    actual      (rows: from, columns: to)\n");
    let ns_head: String = names.iter().map(|n| &n[..1]).collect();
    let pod_head: String = names.iter().map(|n| &n[2..]).collect();
    let _ = writeln!(s, "       {ns_head}   {ns_head}");
    let _ = writeln!(s, "       {pod_head}   {pod_head}");
    for (i, name) in names.iter().enumerate() {
        let e = expect.get(i).map_or("", String::as_str);
        let a = actual.get(i).map_or("", String::as_str);
        let marks: String = e
            .chars()
            .zip(a.chars())
            .map(|(x, y)| if x == y { ' ' } else { '!' })
            .collect();
        let _ = writeln!(s, "  {name}  {e}   {a}   {marks}");
    }
    s
}

fn run_case(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Case = serde_saphyr::from_str(&text).map_err(|e| e.to_string())?;
    if case.upstream.is_some() != case.context.is_some() {
        return Err("`upstream` and `context` go together".into());
    }
    let source = path.display().to_string();
    let mut state = State::new();
    state.apply(&case.policies, &source)?;
    let mut failures = Vec::new();
    let mut probes = 0;
    for (si, step) in case.steps.iter().enumerate() {
        state.change(step, &source)?;
        for probe in &step.probes {
            probes += 1;
            let what = format!(
                "{}: step {si}, {}/{}",
                case.name, probe.protocol, probe.port
            );
            let well_formed = probe.expect.len() == 9
                && probe
                    .expect
                    .iter()
                    .all(|r| r.len() == 9 && r.chars().all(|c| c == 'X' || c == '.'));
            if !well_formed {
                return Err(format!("{what}: `expect` must be 9 rows of 9 'X' or '.'"));
            }
            let rendered = render(&probe.reachability)?;
            if rendered != probe.expect {
                failures.push(format!(
                    "{what}: the data file's `reachability` does not give its `expect`\n{}",
                    diff_table(&probe.expect, &rendered)
                ));
            }
            let protocol: Protocol = probe.protocol.parse().map_err(|e| format!("{e}"))?;
            let actual = state.matrix(probe.port, protocol)?;
            if actual != probe.expect {
                failures.push(format!(
                    "{what}: compiled policy disagrees\n{}",
                    diff_table(&probe.expect, &actual)
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

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netpol_cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn upstream_netpol_cases_evaluate_to_their_expected_matrices() {
    let files = case_files();
    assert!(
        files.len() >= 51,
        "expected the case files, found {}",
        files.len()
    );
    let mut errors = Vec::new();
    let mut probes = 0;
    for f in &files {
        match run_case(f) {
            Ok(n) => probes += n,
            Err(e) => errors.push(format!("{}:\n{e}", f.display())),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} case files failed:\n\n{}",
        errors.len(),
        files.len(),
        errors.join("\n\n")
    );
    println!("{} case files, {probes} matrices", files.len());
}

#[test]
fn case_names_are_unique_and_match_file_names() {
    let mut names = std::collections::BTreeSet::new();
    for f in case_files() {
        let text = std::fs::read_to_string(&f).expect("readable");
        let case: Case = serde_saphyr::from_str(&text).expect("valid case file");
        let stem = f.file_stem().and_then(|s| s.to_str()).expect("utf-8 name");
        assert_eq!(
            stem.split_once('-').map(|(_, rest)| rest),
            Some(case.name.as_str()),
            "{}",
            f.display()
        );
        assert!(names.insert(case.name.clone()), "duplicate {}", case.name);
    }
}

#[test]
fn a_wrong_expectation_is_reported_as_a_table() {
    let expect: Vec<String> = (0..9).map(|_| "XXXXXXXXX".to_string()).collect();
    let mut actual = expect.clone();
    actual[3] = "X.XXXXXXX".into();
    let t = diff_table(&expect, &actual);
    assert!(t.contains("  y/a  XXXXXXXXX   X.XXXXXXX    ! "), "{t}");
    let rows = render(&[
        "ExpectAllEgress(y/a, false)".into(),
        "Expect(y/a, x/a, true)".into(),
    ])
    .expect("valid operations");
    assert_eq!(
        rows[3], "X..X.....",
        "row y/a: x/a allowed, loopback allowed"
    );
    assert!(render(&["ExpectSomething(x/a, true)".into()]).is_err());
}
