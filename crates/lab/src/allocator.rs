//! The API server's Service allocations, as pure functions: `spec.clusterIP` from the service
//! CIDR, `ports[].nodePort` and `healthCheckNodePort` from the node-port range, and the
//! defaults the API server writes into a Service. `api` does the IO: it reads the stored
//! services and the allocation [`Index`], calls [`prepare`], and writes the index and the
//! services with compare-and-swap, so concurrent `flatnet apply` runs never hand out one value
//! twice.
//!
//! Rules (as kube-apiserver's allocators):
//! - clusterIPs come from the service CIDR, never its network or broadcast address; the first
//!   host (`kubernetes`) and the tenth address (`kube-dns`) only when a manifest asks for them.
//!   Dynamic picks start in the upper band of the range (KEP-3070: the lower band, at most 256
//!   addresses, is left for static picks), at a point derived from `namespace/name`, so a
//!   re-created service tends to get its old address back.
//! - nodePorts come from 30000-32767, unique per protocol; dynamic picks start in the upper
//!   band too. Ports of one service with the same number share one nodePort where they can.
//! - An update keeps clusterIP, nodePorts (matched by port name) and healthCheckNodePort unless
//!   the manifest sets them; clusterIP is immutable (as in Kubernetes) except to and from
//!   ExternalName; a type change to ClusterIP drops the nodePorts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use model::{IntOrString, Service};
use serde::{Deserialize, Serialize};

/// The node-port range (kube-apiserver's default `--service-node-port-range`).
pub const NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// An index entry whose holder does not (or no longer) use the value is reclaimed after this
/// long: an `apply` writes the index a few milliseconds before the service, so a younger entry
/// may belong to a service being written right now.
pub const GRACE_SECS: i64 = 60;

/// Store key of the allocation index (relative to the store prefix).
pub const INDEX_KEY: &str = "allocations/services";

/// Who holds which clusterIP and nodePort; one JSON value in the store, written with
/// compare-and-swap.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Index {
    /// By IP.
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: BTreeMap<String, Holder>,
    /// By `PROTOCOL/port` (`TCP/30080`).
    #[serde(rename = "nodePorts", default)]
    pub node_ports: BTreeMap<String, Holder>,
}

/// One index entry.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Holder {
    /// `namespace/name` of the service.
    pub service: String,
    /// When the entry was made (seconds since the epoch).
    pub since: i64,
}

/// The values one service holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// `spec.clusterIP`, when it is an IPv4 address (None for headless and unallocated Services).
    pub cluster_ip: Option<Ipv4Addr>,
    /// (protocol, port): nodePorts and the healthCheckNodePort (TCP).
    pub node_ports: BTreeSet<(String, u16)>,
}

/// What a stored service holds.
pub fn held(svc: &Service) -> Held {
    let mut h = Held {
        cluster_ip: svc.spec.cluster_ip.as_deref().and_then(|s| s.parse().ok()),
        ..Held::default()
    };
    for p in &svc.spec.ports {
        if let Some(np) = p.node_port.filter(|n| *n != 0) {
            h.node_ports.insert((p.protocol().to_string(), np));
        }
    }
    if let Some(np) = svc.spec.health_check_node_port.filter(|n| *n != 0) {
        h.node_ports.insert(("TCP".to_string(), np));
    }
    h
}

fn port_key(proto: &str, port: u16) -> String {
    format!("{proto}/{port}")
}

fn parse_port_key(k: &str) -> Option<(String, u16)> {
    let (proto, port) = k.split_once('/')?;
    Some((proto.to_string(), port.parse().ok()?))
}

impl Index {
    /// Records exactly what `owner` holds now: its other entries go, entries it keeps keep
    /// their age.
    pub fn set_holder(&mut self, owner: &str, h: &Held, now: i64) {
        let ips: BTreeSet<String> = h.cluster_ip.iter().map(Ipv4Addr::to_string).collect();
        let ports: BTreeSet<String> = h.node_ports.iter().map(|(p, n)| port_key(p, *n)).collect();
        self.cluster_ips
            .retain(|k, v| v.service != owner || ips.contains(k));
        self.node_ports
            .retain(|k, v| v.service != owner || ports.contains(k));
        for ip in ips {
            self.cluster_ips.entry(ip).or_insert_with(|| Holder {
                service: owner.to_string(),
                since: now,
            });
        }
        for p in ports {
            self.node_ports.entry(p).or_insert_with(|| Holder {
                service: owner.to_string(),
                since: now,
            });
        }
    }

    /// Drops entries whose holder does not hold the value (gone, or changed) and that are
    /// older than [`GRACE_SECS`]; `services` are the stored ones by `namespace/name`.
    pub fn gc(&mut self, services: &BTreeMap<String, Held>, now: i64) {
        let live = |h: &Holder, holds: &dyn Fn(&Held) -> bool| {
            now - h.since < GRACE_SECS || services.get(&h.service).is_some_and(holds)
        };
        self.cluster_ips.retain(|ip, h| {
            live(h, &|s: &Held| {
                s.cluster_ip.map(|i| i.to_string()).as_deref() == Some(ip.as_str())
            })
        });
        self.node_ports.retain(|k, h| {
            let key = parse_port_key(k);
            live(h, &|s: &Held| {
                key.as_ref().is_some_and(|key| s.node_ports.contains(key))
            })
        });
    }

    /// Drops every entry of the services `gone` names (`namespace/name`) that the stored
    /// service (if any) does not hold: after a delete.
    pub fn release(&mut self, gone: &dyn Fn(&str) -> bool, services: &BTreeMap<String, Held>) {
        let holds_ip = |h: &Holder, ip: &str| {
            services
                .get(&h.service)
                .is_some_and(|s| s.cluster_ip.map(|i| i.to_string()).as_deref() == Some(ip))
        };
        self.cluster_ips
            .retain(|ip, h| !gone(&h.service) || holds_ip(h, ip));
        self.node_ports.retain(|k, h| {
            !gone(&h.service)
                || parse_port_key(k).is_some_and(|key| {
                    services
                        .get(&h.service)
                        .is_some_and(|s| s.node_ports.contains(&key))
                })
        });
    }
}

/// The values in use, by holder: the index's entries plus what stored services hold (so a
/// store written before the index existed is safe too).
#[derive(Debug, Clone, Default)]
pub struct InUse {
    ips: BTreeMap<Ipv4Addr, String>,
    ports: BTreeMap<(String, u16), String>,
    /// Index entries per holder, reused first by that holder (a retried apply picks the same).
    own_ips: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl InUse {
    /// `services`: stored services by `namespace/name`.
    pub fn new(index: &Index, services: &BTreeMap<String, Held>) -> InUse {
        let mut u = InUse::default();
        for (ip, h) in &index.cluster_ips {
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                u.ips.insert(ip, h.service.clone());
                u.own_ips.entry(h.service.clone()).or_default().push(ip);
            }
        }
        for (k, h) in &index.node_ports {
            if let Some(key) = parse_port_key(k) {
                u.ports.insert(key, h.service.clone());
            }
        }
        for (name, h) in services {
            if let Some(ip) = h.cluster_ip {
                u.ips.insert(ip, name.clone());
            }
            for p in &h.node_ports {
                u.ports.insert(p.clone(), name.clone());
            }
        }
        u
    }

    fn ip_taken(&self, ip: Ipv4Addr, owner: &str) -> Option<&str> {
        self.ips
            .get(&ip)
            .map(String::as_str)
            .filter(|h| *h != owner)
    }

    fn port_taken(&self, proto: &str, port: u16, owner: &str) -> Option<&str> {
        self.ports
            .get(&(proto.to_string(), port))
            .map(String::as_str)
            .filter(|h| *h != owner)
    }

    /// Marks what `owner` holds now as taken by it (later services of the same apply see it).
    pub fn claim(&mut self, owner: &str, h: &Held) {
        self.ips.retain(|_, o| o != owner);
        self.ports.retain(|_, o| o != owner);
        if let Some(ip) = h.cluster_ip {
            self.ips.insert(ip, owner.to_string());
        }
        for p in &h.node_ports {
            self.ports.insert(p.clone(), owner.to_string());
        }
    }
}

/// The cluster's ranges.
#[derive(Debug, Clone)]
pub struct Ranges {
    /// The service CIDR clusterIPs come from (`serviceCIDR` of the network config).
    pub service_cidr: Ipv4Net,
    /// The nodePort range (the API server's `--service-node-port-range`).
    pub node_ports: RangeInclusive<u16>,
}

impl Ranges {
    /// The ranges of a cluster with this service CIDR and the default nodePort range
    /// ([`NODE_PORT_RANGE`]).
    pub fn new(service_cidr: Ipv4Net) -> Ranges {
        Ranges {
            service_cidr,
            node_ports: NODE_PORT_RANGE,
        }
    }

    /// Offsets 1..size-1 of the CIDR (not the network, not the broadcast address).
    fn ip_offsets(&self) -> (u32, u32) {
        let size = 1u64 << (32 - u32::from(self.service_cidr.prefix_len()));
        if size <= 2 {
            return (0, 0);
        }
        (1, (size - 1).min(u64::from(u32::MAX)) as u32)
    }

    fn ip_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()).wrapping_add(offset))
    }

    /// Whether `ip` may be handed out at all (inside the CIDR, not network or broadcast).
    fn ip_valid(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.ip_offsets();
        let off = u32::from(ip).wrapping_sub(u32::from(self.service_cidr.network()));
        self.service_cidr.contains(&ip) && off >= lo && off < hi
    }
}

/// kube's `calculateRangeOffset`: the size of the lower band kept for static picks.
fn band(size: u64, min: u64, max: u64, step: u64) -> u64 {
    if size <= min {
        return 0;
    }
    (size / step).clamp(min, max)
}

/// A stable 64-bit hash (FNV-1a), for start points.
fn hash(s: &str) -> u64 {
    crate::names::fnv64(s)
}

/// Candidates in `[lo, hi)`: the upper band `[lo+band, hi)` from a point derived from `seed`,
/// wrapping, then the lower band.
fn candidates(lo: u64, hi: u64, band_size: u64, seed: &str) -> impl Iterator<Item = u64> {
    let upper_lo = (lo + band_size).min(hi);
    let upper_len = hi - upper_lo;
    let start = if upper_len == 0 {
        0
    } else {
        hash(seed) % upper_len
    };
    (0..upper_len)
        .map(move |i| upper_lo + (start + i) % upper_len)
        .chain(lo..upper_lo)
}

fn invalid(field: &str, value: impl std::fmt::Display, detail: &str) -> String {
    format!("{field}: Invalid value: {value}: {detail}")
}

/// Prepares a validated Service manifest for storing: the API server's defaults, and
/// clusterIP, nodePorts and healthCheckNodePort kept from `cur` (the stored service, if any)
/// or allocated. `owner` is `namespace/name`. On error: every field error, as
/// `field: Invalid value: value: detail`.
pub fn prepare(
    manifest: &Service,
    cur: Option<&Service>,
    owner: &str,
    in_use: &InUse,
    ranges: &Ranges,
) -> Result<Service, Vec<String>> {
    let mut svc = manifest.clone();
    let mut errs = Vec::new();
    default_spec(&mut svc);
    let type_ = svc.spec.type_().to_string();
    // ExternalName: no clusterIP, no node ports (the API server drops them on a type change).
    if type_ == "ExternalName" {
        svc.spec.cluster_ip = None;
        svc.spec.cluster_ips.clear();
        svc.spec.health_check_node_port = None;
        for p in &mut svc.spec.ports {
            p.node_port = None;
        }
        return Ok(svc);
    }
    check_families(&svc, &mut errs);
    let ctx = Ctx {
        cur: cur.filter(|c| c.spec.type_() != "ExternalName"),
        owner,
        in_use,
        ranges,
    };
    prepare_cluster_ip(&mut svc, &ctx, &mut errs);
    prepare_node_ports(&mut svc, &ctx, &mut errs);
    if errs.is_empty() { Ok(svc) } else { Err(errs) }
}

/// What the allocation of one Service looks at besides the Service itself.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    /// The stored Service (not an ExternalName one).
    cur: Option<&'a Service>,
    /// `namespace/name`.
    owner: &'a str,
    in_use: &'a InUse,
    ranges: &'a Ranges,
}

/// Defaults kube-apiserver writes (`SetDefaults_Service` and the REST strategy).
fn default_spec(svc: &mut Service) {
    let spec = &mut svc.spec;
    let type_ = spec.type_().to_string();
    spec.type_ = Some(type_.clone());
    if spec.session_affinity.is_none() {
        spec.session_affinity = Some("None".into());
    }
    if spec.session_affinity() == "ClientIP" {
        let cfg = spec
            .session_affinity_config
            .get_or_insert_with(Default::default);
        let client = cfg.client_ip.get_or_insert_with(Default::default);
        client
            .timeout_seconds
            .get_or_insert(model::DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    }
    for p in &mut spec.ports {
        if p.protocol.is_none() {
            p.protocol = Some("TCP".into());
        }
        if p.target_port.is_none() {
            p.target_port = Some(IntOrString::Int(i32::from(p.port)));
        }
    }
    if type_ == "ExternalName" {
        return;
    }
    if spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    if matches!(type_.as_str(), "NodePort" | "LoadBalancer")
        && spec.external_traffic_policy.is_none()
    {
        spec.external_traffic_policy = Some("Cluster".into());
    }
    if type_ == "LoadBalancer" && spec.allocate_load_balancer_node_ports.is_none() {
        spec.allocate_load_balancer_node_ports = Some(true);
    }
    if spec.ip_families.is_empty() {
        spec.ip_families = vec!["IPv4".into()];
    }
    if spec.ip_family_policy.is_none() {
        spec.ip_family_policy = Some("SingleStack".into());
    }
}

/// The lab is IPv4 only.
fn check_families(svc: &Service, errs: &mut Vec<String>) {
    for (i, f) in svc.spec.ip_families.iter().enumerate() {
        if f != "IPv4" {
            errs.push(invalid(
                &format!("spec.ipFamilies[{i}]"),
                format!("{f:?}"),
                "not configured on this cluster (IPv4 only)",
            ));
        }
    }
    if svc.spec.ip_family_policy.as_deref() == Some("RequireDualStack") {
        errs.push(invalid(
            "spec.ipFamilyPolicy",
            "\"RequireDualStack\"",
            "this cluster is not configured for dual-stack services",
        ));
    }
}

fn prepare_cluster_ip(svc: &mut Service, ctx: &Ctx<'_>, errs: &mut Vec<String>) {
    let Ctx {
        cur,
        owner,
        in_use,
        ranges,
    } = *ctx;
    let asked = svc
        .spec
        .cluster_ip
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| svc.spec.cluster_ips.first().cloned());
    let had = cur.and_then(|c| c.spec.cluster_ip.clone().filter(|s| !s.is_empty()));
    let ip = match (asked, had) {
        (Some(a), Some(h)) if a != h => {
            errs.push(invalid(
                "spec.clusterIP",
                format!("{a:?}"),
                &format!("field is immutable (the service has {h})"),
            ));
            return;
        }
        (Some(a), Some(_)) => a,
        (None, Some(h)) => h,
        (Some(a), None) if a == "None" => a,
        (Some(a), None) => {
            let Ok(ip) = a.parse::<Ipv4Addr>() else {
                errs.push(invalid(
                    "spec.clusterIP",
                    format!("{a:?}"),
                    "must be an IPv4 address (this cluster is IPv4 only)",
                ));
                return;
            };
            if !ranges.ip_valid(ip) {
                errs.push(invalid(
                    "spec.clusterIP",
                    format!("{a:?}"),
                    &format!(
                        "the provided IP ({a}) is not in the valid range. The range of valid IPs is {}",
                        ranges.service_cidr
                    ),
                ));
                return;
            }
            if let Some(other) = in_use.ip_taken(ip, owner) {
                errs.push(invalid(
                    "spec.clusterIP",
                    format!("{a:?}"),
                    &format!("provided IP is already allocated (to service {other})"),
                ));
                return;
            }
            a
        }
        (None, None) => match allocate_ip(owner, in_use, ranges) {
            Some(ip) => ip.to_string(),
            None => {
                errs.push(format!(
                    "spec.clusterIP: Internal error: no free address left in {}",
                    ranges.service_cidr
                ));
                return;
            }
        },
    };
    svc.spec.cluster_ips = vec![ip.clone()];
    svc.spec.cluster_ip = Some(ip);
}

fn allocate_ip(owner: &str, in_use: &InUse, ranges: &Ranges) -> Option<Ipv4Addr> {
    // An index entry this service already holds (a retried or concurrent apply of it).
    if let Some(ip) = in_use
        .own_ips
        .get(owner)
        .into_iter()
        .flatten()
        .find(|ip| ranges.ip_valid(**ip) && in_use.ip_taken(**ip, owner).is_none())
    {
        return Some(*ip);
    }
    let (lo, hi) = ranges.ip_offsets();
    let size = 1u64 << (32 - u32::from(ranges.service_cidr.prefix_len()));
    candidates(u64::from(lo), u64::from(hi), band(size, 16, 256, 16), owner)
        // first host (kubernetes) and tenth address (kube-dns) only on request
        .filter(|o| *o != 1 && *o != 10)
        .map(|o| ranges.ip_at(o as u32))
        .find(|ip| in_use.ip_taken(*ip, owner).is_none())
}

fn prepare_node_ports(svc: &mut Service, ctx: &Ctx<'_>, errs: &mut Vec<String>) {
    let Ctx {
        cur,
        owner,
        in_use,
        ranges,
    } = *ctx;
    let allocate = svc.spec.allocates_node_ports();
    let node_ports_allowed = matches!(svc.spec.type_(), "NodePort" | "LoadBalancer");
    let keep_from = cur.filter(|c| matches!(c.spec.type_(), "NodePort" | "LoadBalancer"));
    // What this service takes, so that two of its own ports never get the same one.
    let mut mine: BTreeSet<(String, u16)> = BTreeSet::new();
    let range_msg = format!(
        "provided port is not in the valid range. The range of valid ports is {}-{}",
        ranges.node_ports.start(),
        ranges.node_ports.end()
    );
    // Explicit values first: they win over kept and new ones.
    for (i, p) in svc.spec.ports.iter().enumerate() {
        let Some(np) = p.node_port.filter(|n| *n != 0) else {
            continue;
        };
        let field = format!("spec.ports[{i}].nodePort");
        if !node_ports_allowed {
            continue;
        }
        if !ranges.node_ports.contains(&np) {
            errs.push(invalid(&field, np, &range_msg));
        } else if let Some(other) = in_use.port_taken(p.protocol(), np, owner) {
            errs.push(invalid(
                &field,
                np,
                &format!("provided port is already allocated (to service {other})"),
            ));
        } else {
            mine.insert((p.protocol().to_string(), np));
        }
    }
    if let Some(np) = svc.spec.health_check_node_port.filter(|n| *n != 0) {
        let field = "spec.healthCheckNodePort";
        if !ranges.node_ports.contains(&np) {
            errs.push(invalid(field, np, &range_msg));
        } else if let Some(other) = in_use.port_taken("TCP", np, owner) {
            errs.push(invalid(
                field,
                np,
                &format!("provided port is already allocated (to service {other})"),
            ));
        } else {
            mine.insert(("TCP".into(), np));
        }
    }
    let free = |proto: &str, np: u16, mine: &BTreeSet<(String, u16)>| {
        ranges.node_ports.contains(&np)
            && in_use.port_taken(proto, np, owner).is_none()
            && !mine.contains(&(proto.to_string(), np))
    };
    let old_by_name: BTreeMap<String, u16> = keep_from
        .map(|c| {
            c.spec
                .ports
                .iter()
                .filter_map(|p| {
                    Some((
                        p.name.clone().unwrap_or_default(),
                        p.node_port.filter(|n| *n != 0)?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let n = svc.spec.ports.len();
    for i in 0..n {
        let p = &svc.spec.ports[i];
        if !node_ports_allowed {
            svc.spec.ports[i].node_port = None;
            continue;
        }
        if p.node_port.is_some_and(|n| n != 0) {
            continue;
        }
        let proto = p.protocol().to_string();
        let name = p.name.clone().unwrap_or_default();
        // Kept from the stored service (by port name), when nothing else took it meanwhile.
        let kept = old_by_name
            .get(&name)
            .copied()
            .filter(|np| free(&proto, *np, &mine));
        let chosen = if let Some(np) = kept {
            Some(np)
        } else if !allocate {
            None
        } else {
            // The nodePort of a sibling port with the same number (TCP+UDP 53 share one).
            let sibling = svc.spec.ports[..i]
                .iter()
                .filter(|q| q.port == p.port)
                .filter_map(|q| q.node_port)
                .find(|np| free(&proto, *np, &mine));
            match sibling {
                Some(np) => Some(np),
                None => match allocate_port(
                    &proto,
                    &format!("{owner}/{name}"),
                    &mine,
                    owner,
                    in_use,
                    ranges,
                ) {
                    Some(np) => Some(np),
                    None => {
                        errs.push(format!(
                            "spec.ports[{i}].nodePort: Internal error: no free {proto} port left in {}-{}",
                            ranges.node_ports.start(),
                            ranges.node_ports.end()
                        ));
                        None
                    }
                },
            }
        };
        if let Some(np) = chosen {
            mine.insert((proto, np));
        }
        svc.spec.ports[i].node_port = chosen;
    }
    // healthCheckNodePort: LoadBalancer with externalTrafficPolicy Local only.
    if !svc.spec.needs_health_check_node_port() {
        svc.spec.health_check_node_port = None;
    } else if svc.spec.health_check_node_port.is_none_or(|n| n == 0) {
        let kept = cur
            .and_then(|c| c.spec.health_check_node_port)
            .filter(|np| free("TCP", *np, &mine));
        let chosen = kept.or_else(|| {
            allocate_port(
                "TCP",
                &format!("{owner}/healthz"),
                &mine,
                owner,
                in_use,
                ranges,
            )
        });
        if chosen.is_none() {
            errs.push(format!(
                "spec.healthCheckNodePort: Internal error: no free TCP port left in {}-{}",
                ranges.node_ports.start(),
                ranges.node_ports.end()
            ));
        }
        svc.spec.health_check_node_port = chosen;
    }
}

fn allocate_port(
    proto: &str,
    seed: &str,
    mine: &BTreeSet<(String, u16)>,
    owner: &str,
    in_use: &InUse,
    ranges: &Ranges,
) -> Option<u16> {
    let (lo, hi) = (
        u64::from(*ranges.node_ports.start()),
        u64::from(*ranges.node_ports.end()) + 1,
    );
    candidates(lo, hi, band(hi - lo, 16, 128, 32), seed)
        .filter_map(|p| u16::try_from(p).ok())
        .find(|np| {
            in_use.port_taken(proto, *np, owner).is_none()
                && !mine.contains(&(proto.to_string(), *np))
        })
}

#[cfg(test)]
mod tests;
