//! Subnet leases: the values of `subnets/<cidr>` keys, and the backend they are for.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::keys;
use crate::KeyValue;

/// VXLAN network identifier of the pod network.
pub const VXLAN_VNI: u32 = 1;
/// Bytes VXLAN adds to an IPv4 packet: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// How pod traffic crosses between nodes (design.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// One route per remote pod CIDR via the remote node's underlay IP (needs L2 adjacency).
    HostGw,
    /// One VXLAN device per node; per remote node a route, a neighbour and an FDB entry.
    Vxlan,
}

impl Backend {
    /// Bytes the backend adds to every pod packet on the underlay.
    pub fn overhead(self) -> u32 {
        match self {
            Backend::HostGw => 0,
            Backend::Vxlan => VXLAN_OVERHEAD,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        })
    }
}

/// An Ethernet MAC address, written and serialized as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The VTEP MAC of a node: locally administered, unicast, `0a:46:` + the underlay IPv4
    /// address. Derived rather than random so a re-created device keeps its MAC and the other
    /// nodes' FDB and neighbour entries stay valid.
    pub fn for_vtep(underlay_ip: Ipv4Addr) -> Mac {
        let [a, b, c, d] = underlay_ip.octets();
        Mac([0x0a, 0x46, a, b, c, d])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Option<Vec<u8>> = s
            .split(':')
            .map(|p| {
                (p.len() == 2)
                    .then(|| u8::from_str_radix(p, 16).ok())
                    .flatten()
            })
            .collect();
        parts
            .and_then(|p| <[u8; 6]>::try_from(p).ok())
            .map(Mac)
            .ok_or_else(|| format!("invalid MAC address {s:?}"))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The value of a subnet lease key (`subnets/<cidr>`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAttrs {
    /// The node holding the subnet.
    pub node: String,
    /// `underlayIP`: the node's address on the underlay; the next hop (host-gw) or tunnel endpoint
    /// (vxlan).
    #[serde(rename = "underlayIP")]
    pub underlay_ip: Ipv4Addr,
    /// The backend the node runs; `vxlan` also sets `vtepMAC` and `vni`.
    pub backend: Backend,
    /// MAC of the node's VXLAN device (vxlan only).
    #[serde(rename = "vtepMAC", default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
    /// VXLAN network identifier (vxlan only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

impl LeaseAttrs {
    /// What a node with this underlay IP publishes for `backend`.
    pub fn new(node: &str, underlay_ip: Ipv4Addr, backend: Backend) -> Self {
        let vxlan = backend == Backend::Vxlan;
        LeaseAttrs {
            node: node.to_string(),
            underlay_ip,
            backend,
            vtep_mac: vxlan.then(|| Mac::for_vtep(underlay_ip)),
            vni: vxlan.then_some(VXLAN_VNI),
        }
    }
}

/// A node's subnet lease: the pod CIDR it owns and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The node's subnet (from the key `subnets/<cidr>`).
    pub cidr: Ipv4Net,
    /// What the node publishes about it (the key's value).
    #[serde(flatten)]
    pub attrs: LeaseAttrs,
}

/// `subnets/<key>` -> CIDR, for keys that name one.
pub fn key_cidr(key: &str) -> Option<Ipv4Net> {
    keys::subnet_cidr(key)?.parse().ok()
}

/// The leases under `subnets/` that parse, with their store keys.
pub fn decode_leases(kvs: &[KeyValue]) -> Vec<(KeyValue, Lease)> {
    let mut out = Vec::new();
    for kv in kvs {
        let Some(cidr) = key_cidr(&kv.key) else {
            tracing::warn!(key = %kv.key, "ignoring a subnet key that names no IPv4 CIDR");
            continue;
        };
        match kv.decode::<LeaseAttrs>() {
            Ok(attrs) => out.push((kv.clone(), Lease { cidr, attrs })),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "ignoring an undecodable subnet lease")
            }
        }
    }
    out
}
