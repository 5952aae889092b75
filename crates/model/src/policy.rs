//! NetworkPolicy (`networking.k8s.io/v1`).
//!
//! Absent and empty differ in this API, so the view keeps them apart: `ingress: []` (deny)
//! and a missing `ingress` are `Some(vec![])` and `None`; a missing `namespaceSelector` (the
//! policy's own namespace) and `namespaceSelector: {}` (every namespace) are `None` and
//! `Some(LabelSelector::default())`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::meta::{IntOrString, LabelSelector, ObjectMeta};

/// A `networking.k8s.io/v1` NetworkPolicy.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicy {
    /// `metadata`; the policy applies in its namespace only.
    pub metadata: ObjectMeta,
    /// `spec`: which pods, which directions, which peers.
    pub spec: NetworkPolicySpec,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NetworkPolicy `spec`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; missing or `{}` selects them all.
    pub pod_selector: LabelSelector,
    /// `spec.ingress`: allowed incoming traffic; `Some(vec![])` (`ingress: []`) allows none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    /// `spec.egress`: allowed outgoing traffic once the policy isolates egress (see
    /// [`NetworkPolicySpec::policy_types`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
    /// `Ingress` and/or `Egress`; see [`NetworkPolicySpec::policy_types`] for the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetworkPolicySpec {
    /// `(ingress, egress)`: whether the policy isolates the pods it selects in each direction.
    ///
    /// The API server's default when `policyTypes` is missing or empty: `Ingress` always, and
    /// `Egress` when the policy has at least one egress rule (`egress: []` does not count,
    /// as in upstream `SetDefaults_NetworkPolicy`, which tests `len(spec.Egress) != 0`).
    pub fn policy_types(&self) -> (bool, bool) {
        match self.policy_types.as_deref() {
            Some(types) if !types.is_empty() => (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ),
            _ => (true, self.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }
}

/// One `spec.ingress` rule. `from` and `ports` missing or empty both mean "any".
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicyIngressRule {
    /// `from`: the peers allowed to connect; missing or empty allows every source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`: the destination ports allowed; missing or empty allows every port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `spec.egress` rule. `to` and `ports` missing or empty both mean "any".
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicyEgressRule {
    /// `to`: the peers the pods may connect to; missing or empty allows every destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`: the destination ports allowed; missing or empty allows every port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A peer: pods (by namespace and/or pod selector) or an `ipBlock`, never both.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicyPeer {
    /// `podSelector`: pods selected by label, in the policy's namespace unless `namespaceSelector`
    /// is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// `namespaceSelector`: namespaces selected by label; `Some` of an empty selector is every
    /// namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// `ipBlock`: a CIDR range; not combined with the selectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `ipBlock`: a CIDR minus the CIDRs in `except`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IpBlock {
    /// `cidr`: the allowed range, e.g. `10.0.0.0/8`.
    pub cidr: String,
    /// `except`: sub-ranges of `cidr` that are not allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of a rule's `ports`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicyPort {
    /// `TCP` (the default when absent), `UDP` or `SCTP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number or a container port name; absent means every port of the protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// With a numeric `port`, the last port of the range `port..=endPort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetworkPolicyPort {
    /// The protocol with the API server's default applied.
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> NetworkPolicySpec {
        serde_json::from_value(v).expect("valid spec")
    }

    #[test]
    fn policy_types_default_like_the_api_server() {
        assert_eq!(spec(json!({})).policy_types(), (true, false));
        assert_eq!(spec(json!({"egress": []})).policy_types(), (true, false));
        assert_eq!(spec(json!({"egress": [{}]})).policy_types(), (true, true));
        assert_eq!(
            spec(json!({"policyTypes": [], "egress": [{}]})).policy_types(),
            (true, true)
        );
        assert_eq!(
            spec(json!({"policyTypes": ["Egress"], "ingress": [{}]})).policy_types(),
            (false, true)
        );
    }

    #[test]
    fn missing_and_empty_stay_apart() {
        let s = spec(json!({"ingress": [], "egress": [{"to": [{"podSelector": {}}]}]}));
        assert_eq!(s.ingress, Some(vec![]));
        let peer = &s.egress.as_ref().expect("egress")[0]
            .to
            .as_ref()
            .expect("to")[0];
        assert_eq!(peer.pod_selector, Some(LabelSelector::default()));
        assert_eq!(peer.namespace_selector, None);
        assert_eq!(spec(json!({})).ingress, None);
    }

    #[test]
    fn round_trip_keeps_unknown_fields() {
        let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "x-extra": 1}]}],
                     "future": true}});
        let p: NetworkPolicy = serde_json::from_value(v.clone()).expect("reads");
        assert_eq!(serde_json::to_value(&p).expect("writes"), v);
    }
}
