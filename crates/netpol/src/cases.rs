//! The upstream NetworkPolicy e2e cases as data (`crates/plan/tests/netpol_cases/`, format in
//! its `README.md`): reading a case file, `${ns/pod}` substitution, upstream's
//! `Reachability` operations and a side-by-side table for mismatches.
//!
//! Test support shared by the static replay (`plan/tests/netpol_conformance.rs`) and the lab
//! replay through the CLI (`flatnet/tests/lab_netpol.rs`); compiled only with the `cases`
//! feature, and the only code of this crate that reads files (the agent never enables it).
//! Errors are plain strings: they end up in a test failure message.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The model's namespaces, in matrix order.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The model's pods in each namespace, in matrix order.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every model pod serves, on TCP, UDP and SCTP.
pub const PORTS: [u16; 2] = [80, 81];

/// One case file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The file name without its `NN-` prefix.
    pub name: String,
    /// The upstream `It` text (absent for flatnet's own cases).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The upstream `Describe`/`Context`.
    #[serde(default)]
    pub context: Option<String>,
    /// Free remarks about the case.
    #[serde(default)]
    pub note: Option<String>,
    /// NetworkPolicy manifests created before step 0.
    #[serde(default)]
    pub policies: Vec<Value>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A step: `apply`, then `delete`, then `label`, then the `probes`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// NetworkPolicy manifests to create or replace.
    #[serde(default)]
    pub apply: Vec<Value>,
    /// NetworkPolicies to delete as `namespace/name`; `*` deletes all.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Namespace and pod label changes.
    #[serde(default)]
    pub label: Vec<LabelChange>,
    /// Connectivity matrices to check after the changes.
    pub probes: Vec<Probe>,
}

/// Label changes on one namespace or one pod, as `flatnet label` takes them.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    /// The namespace whose labels change.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `namespace/name`.
    #[serde(default)]
    pub pod: Option<String>,
    /// `key=value` sets, `key-` removes.
    pub labels: Vec<String>,
}

/// What a label change is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTarget {
    /// A namespace, by name.
    Namespace(String),
    /// Namespace and name.
    Pod(String, String),
}

impl LabelChange {
    /// The namespace or pod it changes (exactly one must be given).
    pub fn target(&self) -> Result<LabelTarget, String> {
        match (&self.namespace, &self.pod) {
            (Some(ns), None) => Ok(LabelTarget::Namespace(ns.clone())),
            (None, Some(pod)) => match pod.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Ok(LabelTarget::Pod(ns.to_string(), name.to_string()))
                }
                _ => Err(format!("label: pod {pod:?} is not namespace/name")),
            },
            _ => Err(format!(
                "label: give exactly one of namespace, pod: {self:?}"
            )),
        }
    }

    /// The changes: `(key, Some(value))` sets, `(key, None)` removes.
    pub fn changes(&self) -> Result<Vec<(String, Option<String>)>, String> {
        self.labels
            .iter()
            .map(|kv| match (kv.split_once('='), kv.strip_suffix('-')) {
                (Some((k, v)), _) => Ok((k.to_string(), Some(v.to_string()))),
                (None, Some(k)) => Ok((k.to_string(), None)),
                _ => Err(format!("label: expected key=value or key-, got {kv:?}")),
            })
            .collect()
    }
}

/// One connectivity matrix to check.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Destination port every pod is probed on.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// How upstream built `expect` (documentation, checked by the static replay).
    #[serde(default)]
    pub reachability: Vec<String>,
    /// 9 rows of 9 `X` (allowed) or `.` (blocked); rows are sources, columns destinations.
    pub expect: Vec<String>,
}

impl Probe {
    /// Whether `expect` is 9 rows of 9 `X` or `.`.
    pub fn check_expect(&self) -> Result<(), String> {
        let n = pod_names().len();
        let ok = self.expect.len() == n
            && self
                .expect
                .iter()
                .all(|r| r.len() == n && r.chars().all(|c| c == 'X' || c == '.'));
        if ok {
            Ok(())
        } else {
            Err(format!("`expect` must be {n} rows of {n} 'X' or '.'"))
        }
    }
}

/// The directory holding the case files.
pub fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netpol_cases")
}

/// The case files (`*.yaml` in [`case_dir`]), sorted by name.
pub fn case_files() -> Result<Vec<PathBuf>, String> {
    let dir = case_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and parses one case file.
pub fn load(path: &Path) -> Result<Case, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let case: Case =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if case.upstream.is_some() != case.context.is_some() {
        return Err(format!(
            "{}: `upstream` and `context` go together",
            path.display()
        ));
    }
    Ok(case)
}

/// `ns/pod` of every model pod, in matrix order.
pub fn pod_names() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// Replaces `${ns/pod}` in every string of `v` with that pod's address (`ip_of`).
pub fn substitute(v: &mut Value, ip_of: &dyn Fn(&str) -> Option<Ipv4Addr>) -> Result<(), String> {
    match v {
        Value::String(s) => {
            while let Some(start) = s.find("${") {
                let end = s[start..]
                    .find('}')
                    .ok_or_else(|| format!("unterminated placeholder in {s:?}"))?;
                let key = &s[start + 2..start + end];
                let ip =
                    ip_of(key).ok_or_else(|| format!("placeholder ${{{key}}} names no pod"))?;
                s.replace_range(start..start + end + 1, &ip.to_string());
            }
            Ok(())
        }
        Value::Array(a) => a.iter_mut().try_for_each(|v| substitute(v, ip_of)),
        Value::Object(m) => m.values_mut().try_for_each(|v| substitute(v, ip_of)),
        _ => Ok(()),
    }
}

/// A 0/1 matrix as rows of `X` (1) and `.` (0).
pub fn rows(matrix: &[Vec<u8>]) -> Vec<String> {
    matrix
        .iter()
        .map(|row| {
            row.iter()
                .map(|&c| if c == 1 { 'X' } else { '.' })
                .collect()
        })
        .collect()
}

/// Upstream's `Reachability` operations (start all true, then `ExpectPeer` and friends),
/// with loopback allowed as `AllowLoopback` does.
pub fn render(ops: &[String]) -> Result<Vec<String>, String> {
    let names = pod_names();
    let n = names.len();
    let matches = |peer: &str, pod: &str| {
        let (pns, pp) = peer.split_once('/').unwrap_or((peer, "*"));
        let (ns, p) = pod.split_once('/').unwrap_or((pod, ""));
        (pns == "*" || pns == ns) && (pp == "*" || pp == p)
    };
    let mut m = vec![vec![true; n]; n];
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

/// Two matrices side by side (`left` and `right` are the column titles), mismatching cells
/// marked with `!` under the row.
pub fn diff_table(left: (&str, &[String]), right: (&str, &[String])) -> String {
    let names = pod_names();
    let w = names.len();
    let mut s = format!(
        "       {:<w$}   {:<w$}   (rows: from, columns: to)\n",
        left.0, right.0
    );
    let ns_head: String = names.iter().map(|n| &n[..1]).collect();
    let pod_head: String = names.iter().map(|n| &n[2..]).collect();
    let _ = writeln!(s, "       {ns_head}   {ns_head}");
    let _ = writeln!(s, "       {pod_head}   {pod_head}");
    for (i, name) in names.iter().enumerate() {
        let e = left.1.get(i).map_or("", String::as_str);
        let a = right.1.get(i).map_or("", String::as_str);
        let marks: String = e
            .chars()
            .zip(a.chars())
            .map(|(x, y)| if x == y { ' ' } else { '!' })
            .collect();
        let _ = writeln!(s, "  {name}  {e:<w$}   {a:<w$}   {marks}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_is_shown_side_by_side() {
        let expect: Vec<String> = (0..9).map(|_| "XXXXXXXXX".to_string()).collect();
        let mut actual = expect.clone();
        actual[3] = "X.XXXXXXX".into();
        let t = diff_table(("expected", &expect), ("actual", &actual));
        assert!(t.contains("  y/a  XXXXXXXXX   X.XXXXXXX    ! "), "{t}");
        assert!(t.contains("expected    actual"), "{t}");
    }

    #[test]
    fn reachability_operations_build_upstream_tables() {
        let rows = render(&[
            "ExpectAllEgress(y/a, false)".into(),
            "Expect(y/a, x/a, true)".into(),
        ])
        .expect("valid operations");
        assert_eq!(
            rows[3], "X..X.....",
            "row y/a: x/a allowed, loopback allowed"
        );
        let rows = render(&["ExpectPeer(*/*, x/*, false)".into()]).expect("valid");
        assert_eq!(rows[0], "X..XXXXXX");
        assert_eq!(rows[8], "...XXXXXX");
        assert!(render(&["ExpectSomething(x/a, true)".into()]).is_err());
        assert!(render(&["Expect(x/a, x/b, maybe)".into()]).is_err());
    }

    #[test]
    fn placeholders_become_addresses() {
        let mut v = serde_json::json!({"cidr": "${x/a}/4", "except": ["${x/b}/32"], "n": 1});
        let ip_of = |k: &str| match k {
            "x/a" => Some(Ipv4Addr::new(10, 0, 0, 1)),
            "x/b" => Some(Ipv4Addr::new(10, 0, 0, 2)),
            _ => None,
        };
        substitute(&mut v, &ip_of).expect("known pods");
        assert_eq!(
            v,
            serde_json::json!({"cidr": "10.0.0.1/4", "except": ["10.0.0.2/32"], "n": 1})
        );
        let mut bad = serde_json::json!("${q/q}");
        let err = substitute(&mut bad, &ip_of).expect_err("unknown pod");
        assert!(err.contains("q/q"), "{err}");
        let mut open = serde_json::json!("${x/a");
        assert!(substitute(&mut open, &ip_of).is_err());
    }

    #[test]
    fn label_changes_parse_like_flatnet_label() {
        let l = LabelChange {
            namespace: None,
            pod: Some("x/b".into()),
            labels: vec!["pod=b".into(), "old-".into()],
        };
        assert_eq!(l.target(), Ok(LabelTarget::Pod("x".into(), "b".into())));
        assert_eq!(
            l.changes(),
            Ok(vec![("pod".into(), Some("b".into())), ("old".into(), None)])
        );
        let both = LabelChange {
            namespace: Some("x".into()),
            ..l.clone()
        };
        assert!(both.target().is_err());
        let bad = LabelChange {
            labels: vec!["novalue".into()],
            ..l
        };
        assert!(bad.changes().is_err());
    }

    #[test]
    fn every_case_file_loads() {
        let files = case_files().expect("case dir");
        assert!(files.len() >= 51, "{}", files.len());
        for f in files {
            let c = load(&f).expect("case loads");
            for s in &c.steps {
                for p in &s.probes {
                    p.check_expect().expect("well-formed expect");
                }
            }
        }
    }
}
