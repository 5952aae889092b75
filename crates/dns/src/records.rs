//! Store objects to DNS records (pure), following the Kubernetes DNS-based service discovery
//! specification (schema 1.1.0) and CoreDNS' `kubernetes` plugin where the spec leaves a choice.
//!
//! Every object contributes a list of [`Rr`]s: a name and a record, or a name alone (the name
//! exists, e.g. `<ns>.svc.<zone>` for a namespace, so queries for it are NODATA, not NXDOMAIN).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use ipnet::IpNet;
use model::{EndpointSlice, Pod, Service};

/// CoreDNS' default TTL for every answer of the `kubernetes` plugin (option `ttl`, default 5 s).
pub const DEFAULT_TTL: u32 = 5;
/// TTL of `dns-version.<zone> TXT` (the spec's example and CoreDNS' fixed value).
pub const VERSION_TTL: u32 = 28_800;
/// The schema version the records follow.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the zone is and how it answers.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The cluster domain, lowercase, fully qualified (`cluster.local.`).
    pub domain: Name,
    /// TTL of every record, in seconds ([`DEFAULT_TTL`] unless configured).
    pub ttl: u32,
    /// The DNS service's own address (`ns.dns.<zone>`), if known.
    pub dns_ip: Option<IpAddr>,
    /// Address ranges whose reverse names we answer authoritatively (service and pod CIDRs).
    pub reverse_cidrs: Vec<IpNet>,
}

/// A cluster domain that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Not a DNS name.
    #[error("cluster domain {domain:?}: {reason}")]
    Invalid {
        /// The domain as given.
        domain: String,
        /// What the name parser said.
        reason: String,
    },
    /// The root (`.`): every name would be in the zone.
    #[error("cluster domain {0:?}: must not be the root")]
    Root(String),
}

impl ZoneConfig {
    /// `cluster.local` (or another domain) with the default TTL and no reverse ranges.
    pub fn new(domain: &str) -> Result<Self, DomainError> {
        let mut name = Name::from_ascii(domain)
            .map_err(|e| DomainError::Invalid {
                domain: domain.to_string(),
                reason: e.to_string(),
            })?
            .to_lowercase();
        name.set_fqdn(true);
        if name.is_root() {
            return Err(DomainError::Root(domain.to_string()));
        }
        Ok(Self {
            domain: name,
            ttl: DEFAULT_TTL,
            dns_ip: None,
            reverse_cidrs: Vec::new(),
        })
    }

    /// `<relative>.<domain>`; `None` when the labels are not a valid name.
    pub fn name(&self, relative: &str) -> Option<Name> {
        let rel = Name::from_ascii(relative).ok()?;
        rel.append_domain(&self.domain)
            .ok()
            .map(|n| n.to_lowercase())
    }

    /// The name of the DNS server (`ns.dns.<zone>`), the SOA's MNAME and the apex NS target.
    pub fn ns_name(&self) -> Name {
        self.name("ns.dns").unwrap_or_else(|| self.domain.clone())
    }

    /// The zone's SOA record with `serial`; its minimum (the negative TTL) is the TTL.
    pub fn soa(&self, serial: u32) -> Record {
        let rname = self
            .name("hostmaster")
            .unwrap_or_else(|| self.domain.clone());
        Record::from_rdata(
            self.domain.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.ns_name(),
                rname,
                serial,
                7200,
                1800,
                86_400,
                self.ttl,
            )),
        )
    }

    /// The SOA of the reverse zones we answer for (`in-addr.arpa.` / `ip6.arpa.`, as CoreDNS
    /// serves them).
    pub fn reverse_soa(&self, v6: bool, serial: u32) -> Record {
        let zone = Name::from_ascii(if v6 { "ip6.arpa." } else { "in-addr.arpa." })
            .unwrap_or_else(|_| Name::root());
        let mut soa = self.soa(serial);
        soa.name = zone;
        soa
    }
}

/// One contribution to the zone: a lowercase name and its record, or the name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    /// The owner name, lowercase.
    pub name: LowerName,
    /// The record at that name; `None` only makes the name exist (an empty non-terminal).
    pub record: Option<Record>,
}

impl Rr {
    fn exists(mut name: Name) -> Self {
        name.set_fqdn(true);
        Self {
            name: LowerName::new(&name),
            record: None,
        }
    }

    fn record(name: Name, ttl: u32, data: RData) -> Self {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Self {
            name: LowerName::new(&name),
            record: Some(Record::from_rdata(name, ttl, data)),
        }
    }
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// The label CoreDNS gives an address: dots (or colons) replaced by dashes.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            // The full form, so the label never starts or ends with a dash.
            let s: Vec<String> = v6.segments().iter().map(|s| format!("{s:x}")).collect();
            s.join("-")
        }
    }
}

/// Records that exist whatever the cluster holds: the apex NS, `ns.dns.<zone>`,
/// `dns-version.<zone> TXT "1.1.0"`, and the names `svc.<zone>` and `pod.<zone>`. (The apex
/// SOA is [`ZoneConfig::soa`]: its serial follows the store.)
pub fn static_records(cfg: &ZoneConfig) -> Vec<Rr> {
    let mut out = vec![Rr::record(
        cfg.domain.clone(),
        cfg.ttl,
        RData::NS(NS(cfg.ns_name())),
    )];
    if let Some(ip) = cfg.dns_ip {
        out.push(Rr::record(cfg.ns_name(), cfg.ttl, addr_rdata(ip)));
    }
    if let Some(v) = cfg.name("dns-version") {
        out.push(Rr::record(
            v,
            VERSION_TTL,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        ));
    }
    for sub in ["svc", "pod"] {
        if let Some(n) = cfg.name(sub) {
            out.push(Rr::exists(n));
        }
    }
    out
}

/// A namespace makes `<ns>.svc.<zone>` and `<ns>.pod.<zone>` exist (NODATA, not NXDOMAIN).
pub fn namespace_records(cfg: &ZoneConfig, namespace: &str) -> Vec<Rr> {
    ["svc", "pod"]
        .iter()
        .filter_map(|sub| cfg.name(&format!("{namespace}.{sub}")))
        .map(Rr::exists)
        .collect()
}

/// A pod's records (CoreDNS `pods verified`): `<dashed-ip>.<ns>.pod.<zone>` for each of its
/// IPs. Pods on the host network and pods without an IP have none.
pub fn pod_records(cfg: &ZoneConfig, pod: &Pod) -> Vec<Rr> {
    if pod.spec.host_network == Some(true) {
        return Vec::new();
    }
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let ips: BTreeSet<IpAddr> = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().map(|p| &p.ip))
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.into_iter()
        .filter_map(|ip| {
            let name = cfg.name(&format!("{}.{ns}.pod", dashed(ip)))?;
            Some(Rr::record(name, cfg.ttl, addr_rdata(ip)))
        })
        .collect()
}

/// Whether a slice belongs to the service `ns/name` (by its service-name label).
pub fn slice_service(slice: &EndpointSlice) -> Option<String> {
    let svc = slice.metadata.labels.get(SERVICE_NAME_LABEL)?;
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{ns}/{svc}"))
}

fn proto_label(protocol: Option<&str>) -> String {
    format!("_{}", protocol.unwrap_or("TCP").to_ascii_lowercase())
}

/// Weight of each of `n` SRV records of one name: CoreDNS shares 100 among them.
fn srv_weight(n: usize) -> u16 {
    u16::try_from(100 / n.max(1)).unwrap_or(1).max(1)
}

/// A Service's records, given the EndpointSlices labelled with its name:
/// - ClusterIP (also NodePort, LoadBalancer): `<svc>.<ns>.svc` A/AAAA of the clusterIP(s),
///   `_<port>._<proto>.<svc>.<ns>.svc` SRV for each **named** port (target the service name),
///   and PTR from each clusterIP.
/// - Headless: one A/AAAA per ready endpoint address (ready, or any with
///   `publishNotReadyAddresses`), `<hostname>.<svc>.<ns>.svc` per endpoint (its `hostname`,
///   else its dashed address), SRV per named port and endpoint (target the endpoint's name),
///   PTR from each endpoint address. No ready endpoint: no records (NXDOMAIN).
/// - ExternalName: `<svc>.<ns>.svc` CNAME the external name.
pub fn service_records(cfg: &ZoneConfig, svc: &Service, slices: &[&EndpointSlice]) -> Vec<Rr> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let Some(fqdn) = cfg.name(&format!("{}.{ns}.svc", svc.metadata.name)) else {
        return Vec::new();
    };
    let ttl = cfg.ttl;
    let mut out = Vec::new();
    if svc.spec.type_() == "ExternalName" {
        let Some(ext) = svc.spec.external_name.as_deref().filter(|e| !e.is_empty()) else {
            return out;
        };
        let Ok(mut target) = Name::from_ascii(ext) else {
            return out;
        };
        target.set_fqdn(true);
        out.push(Rr::record(fqdn, ttl, RData::CNAME(CNAME(target))));
        return out;
    }
    if !svc.spec.is_headless() {
        let ips: BTreeSet<IpAddr> = svc
            .spec
            .cluster_ip
            .iter()
            .chain(svc.spec.cluster_ips.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        if ips.is_empty() {
            // Not allocated yet: nothing to answer with.
            return out;
        }
        for ip in &ips {
            out.push(Rr::record(fqdn.clone(), ttl, addr_rdata(*ip)));
            out.push(Rr::record(
                Name::from(*ip),
                ttl,
                RData::PTR(PTR(fqdn.clone())),
            ));
        }
        let named: Vec<_> = svc
            .spec
            .ports
            .iter()
            .filter(|p| p.name.as_deref().is_some_and(|n| !n.is_empty()))
            .collect();
        for p in named {
            let label = format!(
                "_{}.{}",
                p.name.as_deref().unwrap_or_default(),
                proto_label(Some(p.protocol()))
            );
            let Ok(srv_name) = Name::from_ascii(&label).and_then(|l| l.append_domain(&fqdn)) else {
                continue;
            };
            out.push(Rr::record(
                srv_name,
                ttl,
                RData::SRV(SRV::new(0, 100, p.port, fqdn.clone())),
            ));
        }
        return out;
    }
    // Headless: from the endpoints.
    let publish_all = svc.spec.publish_not_ready_addresses == Some(true);
    // (endpoint name, address) in a stable order, and the SRV targets per port label.
    let mut addrs: BTreeMap<IpAddr, Name> = BTreeMap::new();
    let mut srv: BTreeMap<String, BTreeSet<(u16, Name)>> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in &slice.endpoints {
            if !publish_all && ep.conditions.ready == Some(false) {
                continue;
            }
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let host = ep
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| dashed(ip));
                let Some(ep_name) = Name::from_ascii(&host)
                    .ok()
                    .filter(|h| h.num_labels() == 1)
                    .and_then(|h| h.append_domain(&fqdn).ok())
                else {
                    continue;
                };
                addrs.insert(ip, ep_name.clone());
                for port in &slice.ports {
                    let (Some(pname), Some(num)) = (port.name.as_deref(), port.port) else {
                        continue;
                    };
                    if pname.is_empty() {
                        continue;
                    }
                    let label = format!("_{pname}.{}", proto_label(port.protocol.as_deref()));
                    srv.entry(label).or_default().insert((num, ep_name.clone()));
                }
            }
        }
    }
    for (ip, ep_name) in &addrs {
        out.push(Rr::record(fqdn.clone(), ttl, addr_rdata(*ip)));
        out.push(Rr::record(ep_name.clone(), ttl, addr_rdata(*ip)));
        out.push(Rr::record(
            Name::from(*ip),
            ttl,
            RData::PTR(PTR(ep_name.clone())),
        ));
    }
    for (label, targets) in srv {
        let Ok(srv_name) = Name::from_ascii(&label).and_then(|l| l.append_domain(&fqdn)) else {
            continue;
        };
        let weight = srv_weight(targets.len());
        for (port, target) in targets {
            out.push(Rr::record(
                srv_name.clone(),
                ttl,
                RData::SRV(SRV::new(0, weight, port, target)),
            ));
        }
    }
    out
}
