//! The upstream NetworkPolicy e2e cases (kubernetes/kubernetes
//! `test/e2e/network/netpol/network_policy.go`), evaluated statically.
//!
//! Each file in `netpol_cases/` (format: `netpol_cases/README.md`) gives policies, changes
//! between steps and the expected 9x9 reachability matrices. For every probe this test
//! checks that (1) the upstream-style `reachability` operations produce the `expect` rows
//! (so the data file is consistent) and (2) the compiled policy's matrix equals them.
//! All mismatches of all files are reported at once, each as a readable table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use model::NetworkPolicy;
use netpol::cases::{self, Case, LabelTarget, NAMESPACES, PODS, PORTS, Step, diff_table, render};
use netpol::{Cluster, NamedPort, NamespaceInfo, PodInfo, PodRef, Protocol};
use serde_json::Value;

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

    fn refs(&self) -> Vec<PodRef> {
        self.pods
            .iter()
            .map(|p| PodRef::new(&p.namespace, &p.name))
            .collect()
    }

    fn ip_of(&self, key: &str) -> Option<Ipv4Addr> {
        self.pods.iter().find(|p| p.key() == key).and_then(|p| p.ip)
    }

    /// Creates or replaces policies, through the same manifest parser (and validation) as
    /// `flatnet apply`.
    fn apply(&mut self, docs: &[Value], source: &str) -> Result<(), String> {
        let mut docs = docs.to_vec();
        for d in &mut docs {
            cases::substitute(d, &|k| self.ip_of(k))?;
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
        Ok(cases::rows(&m))
    }
}

fn run_case(path: &Path) -> Result<usize, String> {
    let case: Case = cases::load(path)?;
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
            probe.check_expect().map_err(|e| format!("{what}: {e}"))?;
            let rendered = render(&probe.reachability)?;
            if rendered != probe.expect {
                failures.push(format!(
                    "{what}: the data file's `reachability` does not give its `expect`\n{}",
                    diff_table(("expected", &probe.expect), ("rendered", &rendered))
                ));
            }
            let protocol: Protocol = probe.protocol.parse().map_err(|e| format!("{e}"))?;
            let actual = state.matrix(probe.port, protocol)?;
            if actual != probe.expect {
                failures.push(format!(
                    "{what}: compiled policy disagrees\n{}",
                    diff_table(("expected", &probe.expect), ("compiled", &actual))
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

fn case_files() -> Vec<std::path::PathBuf> {
    cases::case_files().unwrap_or_else(|e| panic!("{e}"))
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
        let case = cases::load(&f).expect("valid case file");
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
