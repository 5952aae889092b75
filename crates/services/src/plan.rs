//! Service proxy compiler: Services + EndpointSlices -> the contents of a node's service maps.
//!
//! The dataplane (`inet flatnet`, see [`render_structure`]) has a fixed shape: one verdict map
//! from a *frontend* (destination address, protocol, port) to a small chain, and one map from
//! (frontend, slot) to an endpoint. Services and endpoints are only *elements* of these maps, so
//! loading 10,000 services adds elements, not rules, and a change of one endpoint touches the
//! elements of that one service.
//!
//! A frontend is a ClusterIP, an externalIP, a LoadBalancer ingress IP or a NodePort on one of
//! the node's addresses. Its verdict names the behaviour it needs through a [`Target`]:
//! `lb-N` picks one of N endpoints at random (`numgen random mod N`), `ext-N` first marks the
//! packet for masquerade (external traffic with `externalTrafficPolicy: Cluster`), `extl-N-L`
//! keeps the client address and uses the L local endpoints (`Local`), and the `aff-` variants
//! first look up the client in the session-affinity map. Endpoints are ordered local first, so
//! the L local endpoints are slots `0..L` of the same elements that `lb-N` picks from.
//!
//! Chains exist per distinct N (and L, and affinity timeout), so their number stays small
//! however many services there are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::{EndpointSlice, Service};
use serde::Serialize;

mod compiler;
pub mod health;
pub use compiler::{Compiler, SvcKey};
pub use health::ServiceHealth;

/// The table every node's service proxy owns.
pub const TABLE: &str = "flatnet";
/// Packet mark bit: masquerade this packet in postrouting (as kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;
/// Packet (`meta mark`) value that carries "masquerade this" past the affinity map's DNAT,
/// which ends the chain, to the chain that records the client (`affinity-<timeout>`). Larger
/// than any slot `numgen` writes to the packet mark (a slot is below the endpoint count).
pub const MASQ_CARRY_MARK: u32 = 0x4000_0000;
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Map names, as they appear in `nft list table inet flatnet`.
pub mod maps {
    /// frontend -> `goto <target chain>`.
    pub const SERVICES: &str = "services";
    /// frontend . slot -> endpoint address . port.
    pub const BACKENDS: &str = "backends";
    /// frontend -> `goto reject` (no endpoints at all) or `drop` (a Local policy and no local
    /// endpoint).
    pub const NO_ENDPOINTS: &str = "no-endpoints";
    /// frontend -> affinity id (a conntrack mark shared by every frontend of one service port,
    /// without the masquerade bit: a client keeps its endpoint through all of them).
    pub const AFFINITY_IDS: &str = "affinity-ids";
    /// affinity id -> `goto affinity-<timeout>`, which records the client's endpoint.
    pub const AFFINITY_TIMEOUTS: &str = "affinity-timeouts";
    /// client address . affinity id -> endpoint address . port (dynamic, with timeouts).
    pub const AFFINITY: &str = "affinity";
    /// Every ClusterIP proxied here: a port that is not a service port is refused.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// endpoint . endpoint for the endpoints on this node: a pod reaching itself through its
    /// service is masqueraded (hairpin).
    pub const HAIRPIN: &str = "hairpin";
    /// frontend . allowed source range, for LoadBalancer IPs with `loadBalancerSourceRanges`.
    pub const FIREWALL_ALLOW: &str = "firewall-allow";
    /// frontends that have `loadBalancerSourceRanges`.
    pub const FIREWALL: &str = "firewall";
}

/// Fixed chains the per-count chains go to.
pub mod fixed {
    /// DNAT to `backends[daddr . proto . dport . meta mark]` (the slot `lb-N` chose).
    pub const BACKEND_DNAT: &str = "backend-dnat";
    /// A known client keeps its endpoint (map `affinity`), else `backend-dnat`.
    pub const AFFINITY_LOOKUP: &str = "affinity-lookup";
    /// As `affinity-lookup` for external frontends that masquerade (`ext-aff-N` jumps here
    /// and picks a slot itself when the client is unknown): a known client is DNATed with
    /// [`MASQ_CARRY_MARK`](super::MASQ_CARRY_MARK) on the packet, which the record chain turns
    /// into the masquerade bit.
    pub const EXT_AFFINITY_LOOKUP: &str = "ext-affinity-lookup";
}

/// IP protocol of a service port: the same type NetworkPolicy uses.
pub use model::Protocol as Proto;

/// Where a packet is addressed before DNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    /// Destination address: a ClusterIP, externalIP, LoadBalancer IP or node address (NodePort).
    pub ip: Ipv4Addr,
    /// IP protocol.
    pub proto: Proto,
    /// Destination port: the service port, or the NodePort.
    pub port: u16,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// One endpoint a frontend may DNAT to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Backend {
    /// Endpoint (pod) address.
    pub ip: Ipv4Addr,
    /// Endpoint port: the resolved `targetPort`.
    pub port: u16,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// The behaviour of a frontend that has endpoints: the chain its `services` element jumps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Target {
    /// Internal traffic: one of the first `n` endpoints, client address kept.
    Lb {
        /// Endpoint count.
        n: u32,
        /// `ClientIP` session affinity: a known client keeps its endpoint.
        affinity: bool,
    },
    /// External traffic, `externalTrafficPolicy: Cluster`: masquerade, then one of `n`.
    Ext {
        /// Endpoint count.
        n: u32,
        /// `ClientIP` session affinity.
        affinity: bool,
    },
    /// External traffic, `externalTrafficPolicy: Local`: from pods and from the node itself as
    /// `Ext { n }`; from anywhere else one of the `local` first endpoints with the client
    /// address kept, or dropped when there is none.
    ExtLocal {
        /// Endpoint count.
        n: u32,
        /// How many of the endpoints are on this node (slots `0..local`).
        local: u32,
        /// `ClientIP` session affinity.
        affinity: bool,
    },
}

impl Target {
    /// The chain this target's elements `goto`.
    pub fn chain(&self) -> String {
        match *self {
            Target::Lb { n, affinity } => lb_chain(n, affinity),
            Target::Ext { n, affinity } => format!("ext{}-{n}", aff_suffix(affinity)),
            Target::ExtLocal { n, local, affinity } => {
                format!("extl{}-{n}-{local}", aff_suffix(affinity))
            }
        }
    }

    /// Every chain this target needs, itself first.
    fn chains(&self) -> Vec<DynChain> {
        match *self {
            Target::Lb { n, affinity } => lb_chains(n, affinity),
            Target::Ext { n, affinity } => vec![DynChain::Ext { n, affinity }, DynChain::Lb { n }],
            Target::ExtLocal { n, local, affinity } => {
                let mut v = vec![
                    DynChain::ExtLocal { n, local, affinity },
                    DynChain::Ext { n, affinity },
                    DynChain::Lb { n },
                ];
                if local > 0 {
                    v.extend(lb_chains(local, affinity));
                }
                v
            }
        }
    }
}

fn aff_suffix(affinity: bool) -> &'static str {
    if affinity { "-aff" } else { "" }
}

fn lb_chain(n: u32, affinity: bool) -> String {
    if affinity {
        format!("aff-{n}")
    } else {
        format!("lb-{n}")
    }
}

fn lb_chains(n: u32, affinity: bool) -> Vec<DynChain> {
    if affinity {
        vec![DynChain::Aff { n }, DynChain::Lb { n }]
    } else {
        vec![DynChain::Lb { n }]
    }
}

/// A frontend without a usable endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Refusal {
    /// No endpoint anywhere: refuse at once (TCP reset, ICMP port unreachable).
    Reject,
    /// A Local traffic policy and no endpoint on this node: drop, as kube-proxy does.
    Drop,
}

/// A chain that exists because some element points at it (`lb-3`, `ext-aff-2`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynChain {
    /// `lb-N`: a random slot of `n`, then `backend-dnat`.
    Lb {
        /// Endpoint count.
        n: u32,
    },
    /// `aff-N`: as `lb-N`, but a known client keeps its endpoint (`affinity-lookup`).
    Aff {
        /// Endpoint count.
        n: u32,
    },
    /// `ext-N` / `ext-aff-N`: set the masquerade bit in the conntrack mark, then as `lb-N`.
    Ext {
        /// Endpoint count.
        n: u32,
        /// Whether a known client keeps its endpoint (`ext-affinity-lookup` first).
        affinity: bool,
    },
    /// `extl-N-L` / `extl-aff-N-L`: pods and the node go to `ext-N`; others to the `L` local
    /// endpoints, or are dropped when there is none.
    ExtLocal {
        /// Endpoint count.
        n: u32,
        /// Local endpoint count (the first slots).
        local: u32,
        /// With session affinity.
        affinity: bool,
    },
    /// Records a client's endpoint in the affinity map with this timeout (seconds).
    Record {
        /// Affinity timeout, in seconds (`sessionAffinityConfig.clientIP.timeoutSeconds`).
        timeout: u32,
    },
}

impl DynChain {
    /// The chain's name in the table (`lb-3`, `ext-aff-2`, `extl-4-1`, `affinity-10800`).
    pub fn name(&self) -> String {
        match *self {
            DynChain::Lb { n } => lb_chain(n, false),
            DynChain::Aff { n } => lb_chain(n, true),
            DynChain::Ext { n, affinity } => Target::Ext { n, affinity }.chain(),
            DynChain::ExtLocal { n, local, affinity } => {
                Target::ExtLocal { n, local, affinity }.chain()
            }
            DynChain::Record { timeout } => format!("affinity-{timeout}"),
        }
    }

    /// The chain's rules, one per line, in nft syntax.
    pub fn rules(&self) -> Vec<String> {
        match *self {
            // The slot, then the fixed chains that read the maps: a new endpoint count makes a
            // chain that names no map, which `nft` adds without loading the maps' elements.
            DynChain::Lb { n } => vec![
                format!("meta mark set numgen random mod {n}"),
                format!("goto {}", fixed::BACKEND_DNAT),
            ],
            DynChain::Aff { n } => vec![
                format!("meta mark set numgen random mod {n}"),
                format!("goto {}", fixed::AFFINITY_LOOKUP),
            ],
            // A known client is DNATed inside the lookup (which ends here); an unknown one gets
            // the masquerade bit and a slot.
            DynChain::Ext { n, affinity: true } => vec![
                format!("jump {}", fixed::EXT_AFFINITY_LOOKUP),
                format!("ct mark set ct mark | {MASQ_MARK:#x}"),
                format!("goto {}", lb_chain(n, false)),
            ],
            DynChain::Ext { n, affinity: false } => vec![
                format!("ct mark set ct mark | {MASQ_MARK:#x}"),
                format!("goto {}", lb_chain(n, false)),
            ],
            DynChain::ExtLocal { n, local, affinity } => {
                let ext = Target::Ext { n, affinity }.chain();
                let mut v = vec![
                    format!("ip saddr @cluster-cidr goto {ext}"),
                    format!("fib saddr type local goto {ext}"),
                ];
                if local > 0 {
                    v.push(format!("goto {}", lb_chain(local, affinity)));
                } else {
                    v.push("drop".to_string());
                }
                v
            }
            // The key is the affinity id without the masquerade bit, whichever frontend the
            // client came through: the bit is parked in the packet mark while the record is
            // written, then put back (nft 1.0.6 cannot list `ct mark & x` inside a
            // concatenation so that it loads again).
            DynChain::Record { timeout } => vec![
                format!(
                    "ct mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set {MASQ_CARRY_MARK:#x} ct mark set ct mark & {:#x}",
                    !MASQ_MARK
                ),
                format!(
                    "update @{} {{ ip saddr . ct mark timeout {timeout}s : ip daddr . th dport }}",
                    maps::AFFINITY
                ),
                format!("meta mark {MASQ_CARRY_MARK:#x} ct mark set ct mark | {MASQ_MARK:#x}"),
            ],
        }
    }
}

/// What the node needs to know about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The Kubernetes Node name.
    pub name: String,
    /// Addresses NodePorts answer on (the node's InternalIP).
    pub addresses: Vec<Ipv4Addr>,
    /// The pod CIDR of the whole cluster: sources inside it are pods.
    pub cluster_cidr: Ipv4Net,
    /// The service CIDR: an address of it that is still the destination after DNAT is
    /// refused (no service has it, or not on that port).
    pub service_cidr: Option<Ipv4Net>,
    /// Every node that can announce LoadBalancer IPs (those holding a subnet lease), this one
    /// included.
    pub nodes: Vec<String>,
}

/// One service port as proxied on this node, for `trace`, `status` and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxiedPort {
    /// `namespace/name:port-name` (or `namespace/name:port` when the port has no name).
    pub service: String,
    /// Protocol of the port.
    pub proto: Proto,
    /// Every address:port the port is reachable at on this node.
    pub frontends: Vec<Frontend>,
    /// Endpoints in slot order (local ones first).
    pub endpoints: Vec<Backend>,
    /// How many of `endpoints` are on this node.
    pub local: u32,
    /// `ClientIP` session affinity timeout, in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
}

/// Everything the service proxy of one node must hold. Compiled by [`compile`]; the maps are
/// what [`Compiler::take_diff`] reports changes of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    /// Map `services`: frontend -> the chain its packets go to.
    #[serde(serialize_with = "ser_map")]
    pub services: BTreeMap<Frontend, Target>,
    /// Map `backends`: (frontend, slot) -> endpoint; slots `0..n`, local endpoints first.
    #[serde(serialize_with = "ser_map")]
    pub backends: BTreeMap<(Frontend, u32), Backend>,
    /// Map `no-endpoints`: frontends without a usable endpoint, and how they refuse.
    #[serde(serialize_with = "ser_map")]
    pub no_endpoints: BTreeMap<Frontend, Refusal>,
    /// Map `affinity-ids`: frontend -> affinity id (conntrack mark), for ports with affinity.
    #[serde(serialize_with = "ser_map")]
    pub affinity_ids: BTreeMap<Frontend, u32>,
    /// Map `affinity-timeouts`: affinity id -> timeout in seconds (the `affinity-<timeout>` chain).
    pub affinity_timeouts: BTreeMap<u32, u32>,
    /// Set `cluster-ips`: every ClusterIP proxied here.
    pub cluster_ips: BTreeSet<Ipv4Addr>,
    /// Set `hairpin`: local endpoint addresses (element `ip . ip`), masqueraded when they reach
    /// themselves through a service.
    pub hairpin: BTreeSet<Ipv4Addr>,
    /// Sets `firewall`/`firewall-allow`: LoadBalancer frontends -> `loadBalancerSourceRanges`.
    #[serde(serialize_with = "ser_map")]
    pub firewall: BTreeMap<Frontend, Vec<Ipv4Net>>,
    /// Set `cluster-cidr`: the pod CIDR; sources inside it are pods (no masquerade, Local bypass).
    pub cluster_cidr: Option<Ipv4Net>,
    /// Set `service-cidr`: an address of it still the destination after DNAT is refused.
    pub service_cidr: Option<Ipv4Net>,
    /// LoadBalancer IPs this node answers ARP for on the underlay (one node per IP).
    pub announce: BTreeSet<Ipv4Addr>,
    /// `healthCheckNodePort` -> the service it reports on (LoadBalancer services with
    /// `externalTrafficPolicy: Local`), served by the agent on every node address.
    pub health_checks: BTreeMap<u16, ServiceHealth>,
    /// UDP frontends -> the addresses of the endpoints that serve (ready, or serving while
    /// terminating), used or not: conntrack entries of an address that leaves this are stale.
    #[serde(skip)]
    pub udp_serving: BTreeMap<Frontend, Vec<Ipv4Addr>>,
    /// Not part of the dataplane: what was proxied and why, for explanations.
    #[serde(skip)]
    pub ports: Vec<ProxiedPort>,
    /// Services left out, with the reason.
    #[serde(skip)]
    pub skipped: Vec<(String, String)>,
}

fn ser_map<K: fmt::Debug, V: Serialize, S: serde::Serializer>(
    m: &BTreeMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(m.len()))?;
    for (k, v) in m {
        seq.serialize_element(&(format!("{k:?}"), v))?;
    }
    seq.end()
}

/// Labels that take a Service away from the default proxy.
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Compiles the proxy state of `node` from every Service and EndpointSlice of the cluster.
/// Pure: the same inputs give the same plan, whatever their order. The agent keeps a
/// [`Compiler`] instead and feeds it the changes.
pub fn compile<'a>(
    node: &NodeView,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> ServicePlan {
    let mut c = Compiler::new(node.clone());
    for s in services {
        c.upsert_service(s);
    }
    for s in slices {
        c.upsert_slice(s);
    }
    c.into_plan()
}

/// The node that announces `ip`: highest rendezvous hash of (ip, node), so every node
/// computes the same winner and a node joining or leaving moves only its own share.
pub fn elect(ip: Ipv4Addr, nodes: &[String]) -> Option<&str> {
    let score = |n: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in ip.octets().iter().chain(n.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    nodes
        .iter()
        .map(String::as_str)
        .max_by_key(|n| (score(n), *n))
}

/// Why a Service gets no proxy rules, if it does not.
fn not_proxied(svc: &Service) -> Option<String> {
    if svc.spec.type_() == "ExternalName" {
        return Some("ExternalName services are DNS only".to_string());
    }
    if svc.spec.is_headless() {
        return Some("headless (clusterIP: None)".to_string());
    }
    if svc.metadata.labels.contains_key(LABEL_HEADLESS) {
        return Some(format!("labelled {LABEL_HEADLESS}"));
    }
    if let Some(p) = svc.metadata.labels.get(LABEL_PROXY_NAME) {
        return Some(format!("labelled {LABEL_PROXY_NAME}={p} (another proxy)"));
    }
    None
}

impl ServicePlan {
    /// Every chain the elements point at.
    pub fn dyn_chains(&self) -> BTreeSet<DynChain> {
        let mut out = BTreeSet::new();
        for t in self.services.values() {
            out.extend(t.chains());
        }
        for t in self.affinity_timeouts.values() {
            out.insert(DynChain::Record { timeout: *t });
        }
        out
    }
}

/// One element of one map, in the dataplane's terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A frontend (`services`, `no-endpoints`, `affinity-ids`).
    Frontend(Frontend),
    /// A frontend and a slot (`backends`).
    Slot(Frontend, u32),
    /// An affinity id (`affinity-timeouts`).
    Id(u32),
    /// An address (`cluster-ips`).
    Ip(Ipv4Addr),
    /// `ip . ip` (hairpin).
    IpPair(Ipv4Addr, Ipv4Addr),
}

/// The value an element maps to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// Set element: no value.
    None,
    /// `goto <chain>`.
    Goto(String),
    /// The `drop` verdict.
    Drop,
    /// Endpoint address . port (`backends`).
    Backend(Backend),
    /// A mark value: the affinity id (`affinity-ids`).
    Mark(u32),
}

/// One change to one map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ElemOp {
    /// Add the element, or replace its value.
    Add {
        /// A [`maps`] name.
        map: &'static str,
        /// The element's key.
        key: Key,
        /// What the key maps to.
        value: Value,
    },
    /// Delete the element.
    Delete {
        /// A [`maps`] name.
        map: &'static str,
        /// The element's key.
        key: Key,
    },
}

/// What turns one plan into another: chains to create before the element changes, the element
/// changes (one atomic transaction), chains to delete after them, and conntrack entries that
/// became stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceDiff {
    /// Dynamic chains to create before the element changes.
    pub add_chains: Vec<DynChain>,
    /// Element changes, deletes before adds (one atomic transaction).
    pub ops: Vec<ElemOp>,
    /// Dynamic chains no element points at any more, deleted after the element changes.
    pub delete_chains: Vec<DynChain>,
    /// UDP flows to these frontends must be forgotten where their reply comes from one of
    /// these endpoints (the endpoint went away).
    pub stale_udp: Vec<(Frontend, Ipv4Addr)>,
    /// UDP frontends that had no endpoint and now have some: forget their flows.
    pub revived_udp: Vec<Frontend>,
    /// Whether the firewall (loadBalancerSourceRanges) or the cluster CIDR changed: the
    /// structure must be re-rendered.
    pub structure_changed: bool,
    /// Affinity ids whose endpoints shrank: remembered clients of the removed endpoints must be
    /// forgotten.
    pub affinity_gc: Vec<(u32, Vec<Backend>)>,
    /// The LoadBalancer IPs this node announces changed.
    pub announce_changed: bool,
    /// [`ServicePlan::health_checks`] changed (a port, or a local endpoint count).
    pub health_changed: bool,
}

impl ServiceDiff {
    /// True when nothing at all changed (no element, chain, conntrack, announce or health change).
    pub fn is_empty(&self) -> bool {
        self.add_chains.is_empty()
            && self.ops.is_empty()
            && self.delete_chains.is_empty()
            && self.stale_udp.is_empty()
            && self.revived_udp.is_empty()
            && !self.structure_changed
            && self.affinity_gc.is_empty()
            && !self.announce_changed
            && !self.health_changed
    }
}

fn target_value(t: &Target) -> Value {
    Value::Goto(t.chain())
}

fn refusal_value(r: &Refusal) -> Value {
    match r {
        Refusal::Reject => Value::Goto("refuse".to_string()),
        Refusal::Drop => Value::Drop,
    }
}

/// Diffs one map: deletes keys that left or changed value, then adds new or changed ones.
#[cfg(test)]
fn diff_map<K: Ord + Clone, V: PartialEq>(
    map: &'static str,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> Key,
    value: impl Fn(&V) -> Value,
    ops: &mut Vec<ElemOp>,
) {
    for (k, v) in old {
        if new.get(k) != Some(v) {
            ops.push(ElemOp::Delete { map, key: key(k) });
        }
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            ops.push(ElemOp::Add {
                map,
                key: key(k),
                value: value(v),
            });
        }
    }
}

#[cfg(test)]
fn diff_set<K: Ord>(
    map: &'static str,
    old: &BTreeSet<K>,
    new: &BTreeSet<K>,
    key: impl Fn(&K) -> Key,
    ops: &mut Vec<ElemOp>,
) {
    for k in old.difference(new) {
        ops.push(ElemOp::Delete { map, key: key(k) });
    }
    for k in new.difference(old) {
        ops.push(ElemOp::Add {
            map,
            key: key(k),
            value: Value::None,
        });
    }
}

/// The changes that turn the dataplane of `old` into that of `new`, from the two whole plans:
/// the reference [`Compiler::take_diff`] is tested against.
#[cfg(test)]
pub(crate) fn diff(old: &ServicePlan, new: &ServicePlan) -> ServiceDiff {
    let mut d = ServiceDiff::default();
    let (oc, nc) = (old.dyn_chains(), new.dyn_chains());
    d.add_chains = nc.difference(&oc).copied().collect();
    d.delete_chains = oc.difference(&nc).copied().collect();
    let ops = &mut d.ops;
    // Elements that stop pointing at something go first, elements that start pointing at it last.
    diff_map(
        maps::SERVICES,
        &old.services,
        &new.services,
        |k| Key::Frontend(*k),
        target_value,
        ops,
    );
    diff_map(
        maps::NO_ENDPOINTS,
        &old.no_endpoints,
        &new.no_endpoints,
        |k| Key::Frontend(*k),
        refusal_value,
        ops,
    );
    diff_map(
        maps::BACKENDS,
        &old.backends,
        &new.backends,
        |(f, s)| Key::Slot(*f, *s),
        |b| Value::Backend(*b),
        ops,
    );
    diff_map(
        maps::AFFINITY_IDS,
        &old.affinity_ids,
        &new.affinity_ids,
        |k| Key::Frontend(*k),
        |id| Value::Mark(*id),
        ops,
    );
    diff_map(
        maps::AFFINITY_TIMEOUTS,
        &old.affinity_timeouts,
        &new.affinity_timeouts,
        |k| Key::Id(*k),
        |t| Value::Goto(DynChain::Record { timeout: *t }.name()),
        ops,
    );
    diff_set(
        maps::CLUSTER_IPS,
        &old.cluster_ips,
        &new.cluster_ips,
        |ip| Key::Ip(*ip),
        ops,
    );
    diff_set(
        maps::HAIRPIN,
        &old.hairpin,
        &new.hairpin,
        |ip| Key::IpPair(*ip, *ip),
        ops,
    );
    // Order within one transaction: deletes before adds, so a changed value is replaced.
    ops.sort_by_key(|op| matches!(op, ElemOp::Add { .. }));
    d.announce_changed = old.announce != new.announce;
    d.structure_changed = old.firewall != new.firewall
        || old.cluster_cidr != new.cluster_cidr
        || old.service_cidr != new.service_cidr;
    d.health_changed = old.health_checks != new.health_checks;
    // Conntrack: UDP endpoints that stopped serving a frontend, and UDP frontends revived.
    for (fe, before) in &old.udp_serving {
        let after = new
            .udp_serving
            .get(fe)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for ip in before.iter().filter(|ip| !after.contains(ip)) {
            d.stale_udp.push((*fe, *ip));
        }
    }
    for fe in new.services.keys().filter(|f| f.proto == Proto::Udp) {
        if !old.services.contains_key(fe) {
            d.revived_udp.push(*fe);
        }
    }
    // Affinity: endpoints removed from a service port with affinity.
    for (fe, id) in &old.affinity_ids {
        let before: BTreeSet<Backend> = old
            .backends
            .range((*fe, 0)..=(*fe, u32::MAX))
            .map(|(_, b)| *b)
            .collect();
        let after: BTreeSet<Backend> = new
            .backends
            .range((*fe, 0)..=(*fe, u32::MAX))
            .map(|(_, b)| *b)
            .collect();
        let gone: Vec<Backend> = before.difference(&after).copied().collect();
        if !gone.is_empty() && !d.affinity_gc.iter().any(|(i, _)| i == id) {
            d.affinity_gc.push((*id, gone));
        }
    }
    d
}

impl ServicePlan {
    /// Every element of the plan as additions (a full load, after flushing the maps).
    pub fn all_ops(&self) -> Vec<ElemOp> {
        let mut ops = Vec::new();
        let mut add = |map: &'static str, key: Key, value: Value| {
            ops.push(ElemOp::Add { map, key, value });
        };
        for (fe, t) in &self.services {
            add(maps::SERVICES, Key::Frontend(*fe), target_value(t));
        }
        for (fe, r) in &self.no_endpoints {
            add(maps::NO_ENDPOINTS, Key::Frontend(*fe), refusal_value(r));
        }
        for ((fe, s), b) in &self.backends {
            add(maps::BACKENDS, Key::Slot(*fe, *s), Value::Backend(*b));
        }
        for (fe, id) in &self.affinity_ids {
            add(maps::AFFINITY_IDS, Key::Frontend(*fe), Value::Mark(*id));
        }
        for (id, t) in &self.affinity_timeouts {
            let chain = DynChain::Record { timeout: *t }.name();
            add(maps::AFFINITY_TIMEOUTS, Key::Id(*id), Value::Goto(chain));
        }
        for ip in &self.cluster_ips {
            add(maps::CLUSTER_IPS, Key::Ip(*ip), Value::None);
        }
        for ip in &self.hairpin {
            add(maps::HAIRPIN, Key::IpPair(*ip, *ip), Value::None);
        }
        ops
    }
}

/// The maps [`ElemOp`]s touch, which a full load flushes first.
pub const STATIC_MAPS: [&str; 7] = [
    maps::SERVICES,
    maps::NO_ENDPOINTS,
    maps::BACKENDS,
    maps::AFFINITY_IDS,
    maps::AFFINITY_TIMEOUTS,
    maps::CLUSTER_IPS,
    maps::HAIRPIN,
];

/// The table's declarations and fixed chains, plus `chains`, as one idempotent `nft -f`
/// script: re-running it on a table that has it already changes nothing but the rules of the
/// chains it lists (each is flushed and refilled inside the same transaction). Map elements are
/// not part of it, except the small `firewall` sets.
pub fn render_structure(plan: &ServicePlan, chains: &BTreeSet<DynChain>) -> String {
    let t = format!("inet {TABLE}");
    let mut s = String::new();
    let cidr = plan
        .cluster_cidr
        .map(|c| c.to_string())
        .unwrap_or_else(|| "0.0.0.0/32".to_string());
    let _ = writeln!(s, "add table {t} {{ comment \"flatnet service proxy\"; }}");
    let decls = [
        (
            maps::SERVICES,
            "type ipv4_addr . inet_proto . inet_service : verdict;",
        ),
        (
            maps::BACKENDS,
            "type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service;",
        ),
        (
            maps::NO_ENDPOINTS,
            "type ipv4_addr . inet_proto . inet_service : verdict;",
        ),
        (
            maps::AFFINITY_IDS,
            "type ipv4_addr . inet_proto . inet_service : mark;",
        ),
        (maps::AFFINITY_TIMEOUTS, "type mark : verdict;"),
        (
            maps::AFFINITY,
            "type ipv4_addr . mark : ipv4_addr . inet_service; size 4194304; flags dynamic,timeout; timeout 3h;",
        ),
    ];
    for (name, body) in decls {
        let _ = writeln!(s, "add map {t} {name} {{ {body} }}");
    }
    let _ = writeln!(s, "add set {t} {} {{ type ipv4_addr; }}", maps::CLUSTER_IPS);
    let _ = writeln!(
        s,
        "add set {t} {} {{ type ipv4_addr . ipv4_addr; }}",
        maps::HAIRPIN
    );
    let _ = writeln!(
        s,
        "add set {t} {} {{ type ipv4_addr . inet_proto . inet_service; }}",
        maps::FIREWALL
    );
    let _ = writeln!(
        s,
        "add set {t} {} {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }}",
        maps::FIREWALL_ALLOW
    );
    let _ = writeln!(
        s,
        "add set {t} cluster-cidr {{ type ipv4_addr; flags interval; }}"
    );
    // Small sets, rewritten whole each time (flush + add in this same transaction).
    let _ = writeln!(s, "flush set {t} cluster-cidr");
    let _ = writeln!(s, "add element {t} cluster-cidr {{ {cidr} }}");
    let _ = writeln!(
        s,
        "add set {t} service-cidr {{ type ipv4_addr; flags interval; }}"
    );
    let _ = writeln!(s, "flush set {t} service-cidr");
    if let Some(c) = plan.service_cidr {
        let _ = writeln!(s, "add element {t} service-cidr {{ {c} }}");
    }
    let _ = writeln!(s, "flush set {t} {}", maps::FIREWALL);
    let _ = writeln!(s, "flush set {t} {}", maps::FIREWALL_ALLOW);
    if !plan.firewall.is_empty() {
        let fes: Vec<String> = plan.firewall.keys().map(frontend_nft).collect();
        let _ = writeln!(
            s,
            "add element {t} {} {{ {} }}",
            maps::FIREWALL,
            fes.join(", ")
        );
        let mut allow = Vec::new();
        for (fe, ranges) in &plan.firewall {
            for r in ranges {
                allow.push(format!("{} . {r}", frontend_nft(fe)));
            }
        }
        let _ = writeln!(
            s,
            "add element {t} {} {{ {} }}",
            maps::FIREWALL_ALLOW,
            allow.join(", ")
        );
    }
    let mut chain = |name: &str, hook: Option<&str>, rules: &[String]| {
        write_chain(&mut s, name, hook, rules);
    };
    chain(
        "refuse",
        None,
        &[
            "meta l4proto tcp reject with tcp reset".to_string(),
            "reject".to_string(),
        ],
    );
    let dispatch = format!(
        "ip daddr . meta l4proto . th dport vmap @{}",
        maps::SERVICES
    );
    chain(
        "nat-prerouting",
        Some("type nat hook prerouting priority -100; policy accept;"),
        std::slice::from_ref(&dispatch),
    );
    chain(
        "nat-output",
        Some("type nat hook output priority -100; policy accept;"),
        std::slice::from_ref(&dispatch),
    );
    chain(
        "nat-postrouting",
        Some("type nat hook postrouting priority 100; policy accept;"),
        &[
            format!(
                "ct status dnat ip saddr . ip daddr @{} masquerade fully-random",
                maps::HAIRPIN
            ),
            format!("ct mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade fully-random"),
            // Pods reaching beyond the cluster are seen with the node's address; pod to pod
            // (daddr in the pod CIDR, also after DNAT) is never NATed.
            "ip saddr @cluster-cidr ip daddr != @cluster-cidr masquerade".to_string(),
        ],
    );
    // Before DNAT: refuse frontends without endpoints, and filter LoadBalancer sources.
    let checks = vec![
        format!(
            "ct state new ip daddr . meta l4proto . th dport vmap @{}",
            maps::NO_ENDPOINTS
        ),
        format!(
            "ct state new ip daddr . meta l4proto . th dport @{} ip daddr . meta l4proto . th dport . ip saddr != @{} drop",
            maps::FIREWALL,
            maps::FIREWALL_ALLOW
        ),
    ];
    chain(
        "filter-prerouting",
        Some("type filter hook prerouting priority -110; policy accept;"),
        &checks,
    );
    chain(
        "filter-output",
        Some("type filter hook output priority -110; policy accept;"),
        &checks,
    );
    // After DNAT: a packet still addressed to a ClusterIP used a port the service lacks.
    let invalid = vec![
        format!("ct state new ip daddr @{} goto refuse", maps::CLUSTER_IPS),
        "ct state new ip daddr @service-cidr goto refuse".to_string(),
    ];
    chain(
        "filter-prerouting-post-dnat",
        Some("type filter hook prerouting priority -90; policy accept;"),
        &invalid,
    );
    chain(
        "filter-output-post-dnat",
        Some("type filter hook output priority -90; policy accept;"),
        &invalid,
    );
    // After DNAT: remember the endpoint chosen for clients of affinity services.
    let record = vec![format!(
        "ct state new ct status dnat ct mark vmap @{}",
        maps::AFFINITY_TIMEOUTS
    )];
    chain(
        "affinity-prerouting",
        Some("type filter hook prerouting priority -99; policy accept;"),
        &record,
    );
    chain(
        "affinity-output",
        Some("type filter hook output priority -99; policy accept;"),
        &record,
    );
    // The map readers the per-count chains go to.
    let backend_dnat = format!(
        "dnat ip to ip daddr . meta l4proto . th dport . meta mark map @{}",
        maps::BACKENDS
    );
    chain(
        fixed::BACKEND_DNAT,
        None,
        std::slice::from_ref(&backend_dnat),
    );
    for (name, ext) in [
        (fixed::AFFINITY_LOOKUP, false),
        (fixed::EXT_AFFINITY_LOOKUP, true),
    ] {
        let mut rules = vec![format!(
            "ct mark set ip daddr . meta l4proto . th dport map @{}",
            maps::AFFINITY_IDS
        )];
        if ext {
            rules.push(format!("meta mark set {MASQ_CARRY_MARK:#x}"));
        }
        rules.push(format!(
            "meta l4proto {{ tcp, udp, sctp }} dnat ip to ip saddr . ct mark map @{}",
            maps::AFFINITY
        ));
        if !ext {
            rules.push(format!("goto {}", fixed::BACKEND_DNAT));
        }
        chain(name, None, &rules);
    }
    s.push_str(&render_chains(chains));
    s
}

/// One chain of the proxy's table as `nft` text.
fn write_chain(s: &mut String, name: &str, hook: Option<&str>, rules: &[String]) {
    nft_chain(s, &format!("inet {TABLE}"), name, hook, rules);
}

/// The per-count chains as `nft` text, targets before the chains that point at them. On a
/// table that has the rest of [`render_structure`] this is all a new endpoint count needs:
/// none of these chains names a large map, so `nft` adds them without loading elements.
pub fn render_chains<'a>(chains: impl IntoIterator<Item = &'a DynChain>) -> String {
    let mut ordered: Vec<&DynChain> = chains.into_iter().collect();
    ordered.sort_by_key(|c| match c {
        DynChain::Lb { .. } | DynChain::Record { .. } => 0,
        DynChain::Aff { .. } => 1,
        DynChain::Ext { .. } => 2,
        DynChain::ExtLocal { .. } => 3,
    });
    let mut s = String::new();
    for c in ordered {
        write_chain(&mut s, &c.name(), None, &c.rules());
    }
    s
}

/// Whether `name` is one of the chains made per distinct endpoint count (`lb-3`, `ext-aff-2`,
/// `extl-4-1`, `affinity-60`, ...), which the proxy deletes when nothing points at them.
/// `laff-N` is no longer made (Local-policy clients use `aff-N`) but still recognised, so a
/// whole load deletes those an older agent left.
pub fn is_dyn_chain_name(name: &str) -> bool {
    let prefixes = [
        "lb-",
        "aff-",
        "laff-",
        "ext-aff-",
        "ext-",
        "extl-aff-",
        "extl-",
        "affinity-",
    ];
    prefixes.iter().any(|p| {
        name.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('-')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

/// `nft` text for deleting chains that nothing points at any more: those that jump first, the
/// chains they jump to last (a chain still referenced cannot be deleted).
pub fn render_delete_chains<S: AsRef<str>>(names: &[S]) -> String {
    let rank = |n: &str| {
        if n.starts_with("extl") {
            0
        } else if n.starts_with("ext") {
            1
        } else if n.starts_with("aff-") || n.starts_with("laff-") {
            2
        } else {
            3
        }
    };
    let mut sorted: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    sorted.sort_by_key(|n| (rank(n), n.to_string()));
    let mut s = String::new();
    for c in sorted {
        let _ = writeln!(s, "delete chain inet {TABLE} {c}");
    }
    s
}

fn frontend_nft(fe: &Frontend) -> String {
    format!("{} . {} . {}", fe.ip, fe.proto.nft_name(), fe.port)
}

/// The text form of element operations (`add element ...`), for golden files and logs. The
/// agent sends the same operations over netlink.
pub fn render_ops(ops: &[ElemOp]) -> String {
    let mut s = String::new();
    for op in ops {
        let (verb, map, key, value) = match op {
            ElemOp::Add { map, key, value } => ("add", map, key, Some(value)),
            ElemOp::Delete { map, key } => ("delete", map, key, None),
        };
        let key = match key {
            Key::Frontend(f) => frontend_nft(f),
            Key::Slot(f, slot) => format!("{} . {slot}", frontend_nft(f)),
            Key::Id(id) => format!("{id:#x}"),
            Key::Ip(ip) => ip.to_string(),
            Key::IpPair(a, b) => format!("{a} . {b}"),
        };
        let value = match value {
            None | Some(Value::None) => String::new(),
            Some(Value::Goto(c)) => format!(" : goto {c}"),
            Some(Value::Drop) => " : drop".to_string(),
            Some(Value::Backend(b)) => format!(" : {} . {}", b.ip, b.port),
            Some(Value::Mark(m)) => format!(" : {m:#x}"),
        };
        let _ = writeln!(s, "{verb} element inet {TABLE} {map} {{ {key}{value} }}");
    }
    s
}

/// What the service proxy of one node does with the first packet of a flow, step by step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The frontend the destination is, if it is one.
    pub frontend: Option<Frontend>,
    /// `namespace/name:port` of the service that owns the frontend.
    pub service: Option<String>,
    /// Where the packet ends up.
    pub outcome: TraceOutcome,
    /// One line per decision, in the order the packet meets them.
    pub steps: Vec<String>,
}

/// Where the packet goes after the service proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TraceOutcome {
    /// Not a service address: routed as it is.
    NotAService,
    /// DNATed to one of `endpoints` (chosen at random; with affinity, a known client keeps its
    /// earlier one), source address masqueraded to the node's when `masquerade`.
    Dnat {
        /// The endpoints it may go to, in slot order.
        endpoints: Vec<Backend>,
        /// Whether the source is rewritten to the node's address.
        masquerade: bool,
        /// Session affinity timeout in seconds, if the port has affinity.
        affinity_timeout: Option<u32>,
    },
    /// Refused at once: TCP reset or ICMP port unreachable.
    Refused {
        /// Why, e.g. no endpoints or a port the ClusterIP does not serve.
        why: String,
    },
    /// Dropped: the client times out.
    Dropped {
        /// Why, e.g. `loadBalancerSourceRanges` or no local endpoint.
        why: String,
    },
}

impl ServicePlan {
    /// What this node's proxy does with a new flow from `src` (a pod, another host, or this
    /// node itself when `from_node`) to `dst:port/proto`. Reads the same maps the kernel holds.
    pub fn trace(
        &self,
        src: Ipv4Addr,
        from_node: bool,
        dst: Ipv4Addr,
        proto: Proto,
        port: u16,
    ) -> Trace {
        let fe = Frontend {
            ip: dst,
            proto,
            port,
        };
        let owner = self
            .ports
            .iter()
            .find(|p| p.frontends.contains(&fe))
            .map(|p| p.service.clone());
        let mut steps = Vec::new();
        let from_pod = self.cluster_cidr.is_some_and(|c| c.contains(&src));
        let done = |frontend, service, outcome, steps| Trace {
            frontend,
            service,
            outcome,
            steps,
        };
        if let Some(ranges) = self.firewall.get(&fe) {
            if !ranges.iter().any(|r| r.contains(&src)) {
                steps.push(format!(
                    "{fe} is a LoadBalancer IP with loadBalancerSourceRanges {ranges:?}; {src} is outside them"
                ));
                return done(
                    Some(fe),
                    owner,
                    TraceOutcome::Dropped {
                        why: format!("source {src} not in loadBalancerSourceRanges"),
                    },
                    steps,
                );
            }
            steps.push(format!("source {src} is inside loadBalancerSourceRanges"));
        }
        if let Some(r) = self.no_endpoints.get(&fe) {
            let svc = owner.clone().unwrap_or_default();
            steps.push(format!("{fe} is a frontend of {svc} (map no-endpoints)"));
            return match r {
                Refusal::Reject => {
                    steps.push(
                        "it has no ready (or serving terminating) endpoint: goto refuse".into(),
                    );
                    done(
                        Some(fe),
                        owner,
                        TraceOutcome::Refused {
                            why: format!("{svc} has no ready endpoints"),
                        },
                        steps,
                    )
                }
                Refusal::Drop => {
                    steps.push(
                        "its traffic policy is Local and this node has no local endpoint: drop"
                            .into(),
                    );
                    done(
                        Some(fe),
                        owner,
                        TraceOutcome::Dropped {
                            why: format!(
                                "{svc}: traffic policy Local and no endpoint on this node"
                            ),
                        },
                        steps,
                    )
                }
            };
        }
        let Some(target) = self.services.get(&fe) else {
            if self.cluster_ips.contains(&dst) {
                steps.push(format!(
                    "{dst} is a ClusterIP but {port}/{proto} is not one of its ports"
                ));
                return done(
                    None,
                    None,
                    TraceOutcome::Refused {
                        why: format!("no service port {port}/{proto} on {dst}"),
                    },
                    steps,
                );
            }
            if self.service_cidr.is_some_and(|c| c.contains(&dst)) {
                steps.push(format!(
                    "{dst} is in the service CIDR but no service has it"
                ));
                return done(
                    None,
                    None,
                    TraceOutcome::Refused {
                        why: format!("no service has {dst}"),
                    },
                    steps,
                );
            }
            steps.push(format!("{fe} is not a service frontend on this node"));
            let masq = from_pod && self.cluster_cidr.is_some_and(|c| !c.contains(&dst));
            if masq {
                steps.push(
                    "a pod leaving the pod CIDR: source masqueraded to the node's address".into(),
                );
            }
            return done(None, None, TraceOutcome::NotAService, steps);
        };
        let svc = owner.clone().unwrap_or_default();
        let all: Vec<Backend> = self
            .backends
            .range((fe, 0)..=(fe, u32::MAX))
            .map(|(_, b)| *b)
            .collect();
        steps.push(format!(
            "{fe} is a frontend of {svc}: map services -> goto {}",
            target.chain()
        ));
        let (n, masq, affinity) = match *target {
            Target::Lb { n, affinity } => (n, false, affinity),
            Target::Ext { n, affinity } => {
                steps.push("external frontend, externalTrafficPolicy Cluster: masquerade".into());
                (n, true, affinity)
            }
            Target::ExtLocal { n, local, affinity } => {
                if from_pod || from_node {
                    steps.push("externalTrafficPolicy Local, but the client is a pod or the node: any endpoint, masquerade".into());
                    (n, true, affinity)
                } else if local == 0 {
                    steps.push(
                        "externalTrafficPolicy Local and no endpoint on this node: drop".into(),
                    );
                    return done(
                        Some(fe),
                        owner,
                        TraceOutcome::Dropped {
                            why: format!(
                                "{svc}: externalTrafficPolicy Local and no endpoint on this node"
                            ),
                        },
                        steps,
                    );
                } else {
                    steps.push(format!("externalTrafficPolicy Local: one of the {local} endpoints on this node, client address kept"));
                    (local, false, affinity)
                }
            }
        };
        let endpoints: Vec<Backend> = all.into_iter().take(n as usize).collect();
        let timeout = if affinity {
            self.affinity_ids
                .get(&fe)
                .and_then(|id| self.affinity_timeouts.get(id))
                .copied()
        } else {
            None
        };
        if let Some(t) = timeout {
            steps.push(format!(
                "sessionAffinity ClientIP: a client seen in the last {t} s keeps its endpoint"
            ));
        }
        steps.push(format!(
            "numgen random mod {n}: DNAT to one of {}",
            endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let hairpin = endpoints.iter().any(|b| b.ip == src);
        if hairpin {
            steps.push(format!("if {src} picks itself: hairpin, masqueraded"));
        }
        done(
            Some(fe),
            owner,
            TraceOutcome::Dnat {
                endpoints,
                masquerade: masq,
                affinity_timeout: timeout,
            },
            steps,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;

/// Appends one chain of `table` (`"inet flatnet"`) as `nft -f` text: declared (with its hook,
/// for base chains), flushed and refilled, so running it again changes nothing.
pub(crate) fn nft_chain(
    s: &mut String,
    table: &str,
    name: &str,
    hook: Option<&str>,
    rules: &[String],
) {
    use std::fmt::Write as _;
    match hook {
        Some(h) => {
            let _ = writeln!(s, "add chain {table} {name} {{ {h} }}");
        }
        None => {
            let _ = writeln!(s, "add chain {table} {name}");
        }
    }
    let _ = writeln!(s, "flush chain {table} {name}");
    for r in rules {
        let _ = writeln!(s, "add rule {table} {name} {r}");
    }
}
