//! The cluster's network config: the value of the `config` key.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::Backend;

/// Value of the `config` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// Every node's subnet is carved from this.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// Prefix length of one node's subnet.
    pub node_prefix_length: u8,
    #[serde(
        rename = "serviceCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    /// `serviceCIDR`: where Service cluster IPs come from, when the cluster has Services.
    pub service_cidr: Option<Ipv4Net>,
    /// `backend`: how packets reach other nodes' subnets (`host-gw` or `vxlan`).
    pub backend: Backend,
    /// Where LoadBalancer IPs come from; the agent owns the addresses of this range that it
    /// puts on the underlay device to answer ARP for them.
    #[serde(
        rename = "loadBalancerPool",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_pool: Option<Ipv4Net>,
}

/// Why a network config cannot be used; each variant names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// The value is not the JSON of a config (a missing field, a wrong type, an unknown
    /// backend); serde's message names the field.
    #[error("invalid network config: {0}")]
    Json(String),
    /// `podCIDR` is not a network address.
    #[error("podCIDR {cidr} has host bits set (did you mean {}?)", cidr.trunc())]
    HostBits {
        /// The `podCIDR` as given.
        cidr: Ipv4Net,
    },
    /// `nodePrefixLength` does not cut `podCIDR` into node subnets of at least 4 addresses.
    #[error("nodePrefixLength {length} must be between the podCIDR prefix length {min} and 30")]
    NodePrefixLength {
        /// The `nodePrefixLength` as given.
        length: u8,
        /// The prefix length of `podCIDR`.
        min: u8,
    },
}

impl NetworkConfig {
    /// Parses and validates the JSON value of the `config` key; the error says what is wrong.
    pub fn parse(json: &[u8]) -> Result<Self, InvalidConfig> {
        let cfg: NetworkConfig =
            serde_json::from_slice(json).map_err(|e| InvalidConfig::Json(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: no host bits in `podCIDR`, a node prefix between its prefix and
    /// /30.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.pod_cidr != self.pod_cidr.trunc() {
            return Err(InvalidConfig::HostBits {
                cidr: self.pod_cidr,
            });
        }
        if self.node_prefix_length < self.pod_cidr.prefix_len() || self.node_prefix_length > 30 {
            return Err(InvalidConfig::NodePrefixLength {
                length: self.node_prefix_length,
                min: self.pod_cidr.prefix_len(),
            });
        }
        Ok(())
    }

    /// True when `cidr` is one of the node subnets of this config.
    pub fn fits(&self, cidr: &Ipv4Net) -> bool {
        cidr.prefix_len() == self.node_prefix_length
            && *cidr == cidr.trunc()
            && self.pod_cidr.contains(cidr)
    }

    /// Every node subnet, in address order (lazy: a /8 cut into /30s is 4M of them).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> {
        // validate() keeps node_prefix_length >= the pod prefix, the only error of subnets().
        self.pod_cidr
            .subnets(self.node_prefix_length)
            .into_iter()
            .flatten()
    }

    /// How many node subnets the pod CIDR holds.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self
            .node_prefix_length
            .saturating_sub(self.pod_cidr.prefix_len()))
    }
}
