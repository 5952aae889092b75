//! The cluster's network config (store key `config`) and the node's CNI conflist.

use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::plan::Backend;

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
    pub service_cidr: Option<Ipv4Net>,
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

impl NetworkConfig {
    /// Parses and validates the JSON value of the `config` key; the error says what is wrong.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let cfg: NetworkConfig =
            serde_json::from_slice(json).map_err(|e| format!("invalid network config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.pod_cidr != self.pod_cidr.trunc() {
            return Err(format!(
                "podCIDR {} has host bits set (did you mean {}?)",
                self.pod_cidr,
                self.pod_cidr.trunc()
            ));
        }
        if self.node_prefix_length < self.pod_cidr.prefix_len() || self.node_prefix_length > 30 {
            return Err(format!(
                "nodePrefixLength {} must be between the podCIDR prefix length {} and 30",
                self.node_prefix_length,
                self.pod_cidr.prefix_len()
            ));
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Conflist<'a> {
    cni_version: &'a str,
    name: &'a str,
    plugins: [Plugin<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plugin<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    subnet: Ipv4Net,
    data_dir: &'a Path,
    mtu: u32,
}

/// The node's CNI network configuration list for `flatnet-cni`; fails only when `ipam_dir`
/// is not UTF-8.
pub fn render_conflist(subnet: Ipv4Net, ipam_dir: &Path, mtu: u32) -> Result<String, String> {
    let conflist = Conflist {
        cni_version: "1.1.0",
        name: "flatnet",
        plugins: [Plugin {
            kind: "flatnet-cni",
            subnet,
            data_dir: ipam_dir,
            mtu,
        }],
    };
    let mut text = serde_json::to_string_pretty(&conflist)
        .map_err(|e| format!("render CNI conflist (dataDir {}): {e}", ipam_dir.display()))?;
    text.push('\n');
    Ok(text)
}

/// Writes `content` to `path` through a temporary file and a rename (readers never see half a
/// file), creating the parent directory; does nothing when the file already holds `content`.
/// Returns whether it wrote.
pub fn write_atomic(path: &Path, content: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, content)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(true)
}
