//! Cluster-scoped kinds: Namespace and Node.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::meta::{Condition, ObjectMeta};

/// A `v1` Namespace (`spec` and `status` stay in `extra`).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Namespace {
    /// `metadata`; the name is a DNS label, and the lab adds the `kubernetes.io/metadata.name`
    /// label on create.
    pub metadata: ObjectMeta,
    /// Fields flatnet does not model (`spec.finalizers`, `status.phase`), kept so a round trip is
    /// lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A `v1` Node, written by the lab for each node it runs.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    /// `metadata`; the name is the lab node's name (also the `kubernetes.io/hostname` label).
    pub metadata: ObjectMeta,
    /// `spec`: the node's pod range.
    pub spec: NodeSpec,
    /// `status`: addresses and the `Ready` condition.
    pub status: NodeStatus,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Node `spec`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSpec {
    /// `spec.podCIDR`: the node's pod subnet; the lab writes its subnet lease here.
    #[serde(rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs`: the same range as a list (one IPv4 entry in flatnet).
    #[serde(rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// Fields flatnet does not model (`taints`, `providerID`, ...), kept so a round trip is
    /// lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Node `status`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    /// `status.addresses`: how the node is reached; see [`NodeStatus::address`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// `status.conditions`: the lab writes `Ready` = `True` while the node's kubelet runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Fields flatnet does not model (`capacity`, `nodeInfo`, ...), kept so a round trip is
    /// lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One node address; flatnet writes `InternalIP` (the underlay address) and `Hostname`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeAddress {
    /// `type`: `InternalIP`, `ExternalIP`, `Hostname`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `address`: the IP or host name itself.
    pub address: String,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NodeStatus {
    /// The first address of the given type (`"InternalIP"`).
    pub fn address(&self, type_: &str) -> Option<&str> {
        self.addresses
            .iter()
            .find(|a| a.type_ == type_)
            .map(|a| a.address.as_str())
    }
}
