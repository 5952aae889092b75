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
