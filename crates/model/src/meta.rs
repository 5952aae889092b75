//! Types shared by every kind: metadata, label selectors, conditions, int-or-string.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `metadata` of any object. Fields flatnet does not model (ownerReferences, finalizers,
/// generation, ...) stay in `extra`.
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Empty only in pod templates (and then not serialized).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `namespace`: a DNS label; defaulted to `default` for namespaced kinds and removed for
    /// cluster-scoped ones by [`crate::parse_manifests`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `labels`: what selectors match; keys and values are checked with the API server's syntax
    /// rules.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `annotations`: free-form metadata; keys are qualified names, at most 256 KiB in all.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `uid`: set by the API (lab) on create and kept across updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `creationTimestamp`: RFC 3339, set by the API (lab) on create and kept across updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// `resourceVersion`: opaque; flatnet keeps it when present but does not use it for
    /// concurrency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ObjectMeta {
    /// Whether the object is being deleted gracefully: it has a `deletionTimestamp` (kept in
    /// `extra`, like `deletionGracePeriodSeconds`).
    pub fn is_being_deleted(&self) -> bool {
        self.extra
            .get("deletionTimestamp")
            .is_some_and(|t| !t.is_null())
    }
}

crate::de::with_extra!(ObjectMeta {
    "name" => name,
    "namespace" => namespace,
    "labels" => labels,
    "annotations" => annotations,
    "uid" => uid,
    "creationTimestamp" => creation_timestamp,
    "resourceVersion" => resource_version,
});

/// A label selector (`matchLabels` and `matchExpressions`), as in NetworkPolicy and Deployment.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    /// `matchLabels`: every pair must be present with that value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`: every requirement must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `matchExpressions` entry. `operator` is one of `In`, `NotIn`, `Exists`, `DoesNotExist`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelectorRequirement {
    /// `key`: the label key the requirement tests.
    pub key: String,
    /// `operator`: `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// `values`: required for `In`/`NotIn`, forbidden for `Exists`/`DoesNotExist`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement (upstream semantics: requirements are ANDed,
    /// the empty selector matches everything, an unknown operator matches nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirement at all (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Parses a selector as written in the API's `labelSelector` parameter and kubectl's `-l`:
    /// comma-separated requirements `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`
    /// and `!k`. Equality becomes `matchLabels`-like `In`, inequality `NotIn` (which, as
    /// upstream, also matches objects without the label). The empty string selects everything.
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let mut out = LabelSelector::default();
        let bad = |why: &str| SelectorError {
            selector: s.to_string(),
            why: why.to_string(),
        };
        if s.trim().is_empty() {
            return Ok(out);
        }
        // Split at commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1).ok_or_else(|| bad("unbalanced ')'"))?,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(bad("unbalanced '('"));
        }
        parts.push(&s[start..]);
        let valid_key = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        };
        for part in parts {
            let part = part.trim();
            let req = |key: &str, op: &str, values: Vec<String>| -> Result<_, SelectorError> {
                if !valid_key(key) {
                    return Err(bad(&format!("invalid label key {key:?}")));
                }
                Ok(LabelSelectorRequirement {
                    key: key.to_string(),
                    operator: op.to_string(),
                    values,
                    extra: Map::new(),
                })
            };
            let r = if let Some(key) = part.strip_prefix('!') {
                req(key.trim(), "DoesNotExist", vec![])?
            } else if let Some((head, set)) = part.split_once('(') {
                let set = set
                    .trim_end()
                    .strip_suffix(')')
                    .ok_or_else(|| bad(&format!("{part:?}: a set must end with ')'")))?;
                let mut words = head.split_whitespace();
                let (key, op) = (words.next().unwrap_or_default(), words.next());
                if words.next().is_some() {
                    return Err(bad(&format!("{part:?}: expected KEY in|notin (VALUES)")));
                }
                let op = match op {
                    Some("in") => "In",
                    Some("notin") => "NotIn",
                    _ => return Err(bad(&format!("{part:?}: expected in or notin"))),
                };
                let values: Vec<String> = set
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.is_empty() {
                    return Err(bad(&format!("{part:?}: a set needs at least one value")));
                }
                req(key, op, values)?
            } else if let Some((k, v)) = part.split_once("!=") {
                req(k.trim(), "NotIn", vec![v.trim().to_string()])?
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                req(k.trim(), "In", vec![v.trim().to_string()])?
            } else if part.contains(['<', '>']) {
                return Err(bad(&format!(
                    "{part:?}: the < and > operators are not supported"
                )));
            } else {
                req(part, "Exists", vec![])?
            };
            out.match_expressions.push(r);
        }
        Ok(out)
    }
}

/// A `labelSelector` string that does not parse ([`LabelSelector::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {why}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong with it.
    pub why: String,
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this one requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.contains(v)),
            "NotIn" => value.is_none_or(|v| !self.values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    }
}

/// A status condition (`Ready`, ...).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// `type`: what the condition is about (`Ready`, `LoadBalancerReady`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: String,
    /// `lastTransitionTime`: RFC 3339 time the status last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// `reason`: a CamelCase machine-readable cause (`KubeletReady`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `message`: a human-readable explanation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A port given as a number or as a name (`targetPort`, probe ports, policy ports).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum IntOrString {
    /// A port number.
    Int(i32),
    /// A port name (an IANA service name, resolved against container port names).
    String(String),
}

impl IntOrString {
    /// The number, if this is one.
    pub fn as_int(&self) -> Option<i32> {
        match self {
            IntOrString::Int(i) => Some(*i),
            IntOrString::String(_) => None,
        }
    }

    /// The name, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            IntOrString::Int(_) => None,
            IntOrString::String(s) => Some(s),
        }
    }
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod selector_tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_strings_parse_as_kubectl_writes_them() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app in (web, db)", true, true),
            ("app notin (web)", false, true),
            ("app in (web,db),tier", true, false),
            (" app = db ", false, true),
        ];
        for (sel, want_web, want_db) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel:?}: {e}"));
            assert_eq!(
                (s.matches(&web), s.matches(&db)),
                (want_web, want_db),
                "{sel:?}"
            );
        }
    }

    #[test]
    fn malformed_label_selectors_are_refused_naming_the_selector() {
        for bad in [
            "app in (web",
            "app in ()",
            "app)",
            "a b=c",
            "app>3",
            "app in web)",
            ",",
        ] {
            let e = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(e.selector, bad);
            assert!(e.to_string().starts_with("invalid label selector"), "{e}");
        }
    }
}
