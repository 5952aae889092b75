//! The incremental service compiler: keeps the node's [`ServicePlan`] up to date as Services,
//! EndpointSlices and nodes come and go, recompiling only the services they touch.
//!
//! Each Service compiles on its own into a [`Fragment`] (its frontends, their verdicts, its
//! endpoints in slot order). Two things couple services: a frontend two services claim (the
//! first by namespace/name keeps it) and affinity ids (a hash of the service port, probed past
//! ids taken by earlier ports). Both are kept as indexes, so a change rewrites only the
//! elements of the frontends it touches. Every element written is journalled with the value it
//! had before the batch, and [`Compiler::take_diff`] turns the journal into the element
//! operations, chains and conntrack cleanups of the batch: its cost follows the change, not
//! the number of services.
//!
//! Inputs are kept compact (addresses, ports, flags), not as whole `model` objects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use model::{EndpointSlice, Service};

use super::{
    Backend, DEFAULT_AFFINITY_TIMEOUT, DynChain, ElemOp, Frontend, Key, LABEL_SERVICE_NAME,
    MASQ_MARK, NodeView, Proto, ProxiedPort, Refusal, ServiceDiff, ServiceHealth, ServicePlan,
    Target, Value, elect, maps, not_proxied, refusal_value, target_value,
};

/// A Service's identity, `(namespace, name)`; its order decides who keeps a shared frontend.
pub type SvcKey = Arc<(String, String)>;

/// A service port as the proxy uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortIn {
    name: String,
    proto: Proto,
    port: u16,
    node_port: Option<u16>,
}

/// A Service reduced to what the proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SvcIn {
    /// Why it gets no rules, if it does not.
    skip: Option<String>,
    cluster_ip: Ipv4Addr,
    external_ips: Vec<Ipv4Addr>,
    lb_ips: Vec<Ipv4Addr>,
    node_ports: bool,
    affinity_timeout: Option<u32>,
    ranges: Vec<Ipv4Net>,
    itp_local: bool,
    etp_local: bool,
    publish: bool,
    /// `healthCheckNodePort` of a LoadBalancer with `externalTrafficPolicy: Local`.
    health_port: Option<u16>,
    ports: Vec<PortIn>,
}

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

impl SvcIn {
    fn new(svc: &Service) -> SvcIn {
        let spec = &svc.spec;
        let mut s = SvcIn {
            skip: not_proxied(svc),
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            node_ports: matches!(spec.type_(), "NodePort" | "LoadBalancer"),
            affinity_timeout: None,
            ranges: Vec::new(),
            itp_local: spec.internal_traffic_policy() == "Local",
            etp_local: spec.external_traffic_policy() == "Local",
            publish: spec.publish_not_ready_addresses == Some(true),
            health_port: spec
                .health_check_node_port
                .filter(|p| *p > 0 && spec.needs_health_check_node_port()),
            ports: Vec::new(),
        };
        if s.skip.is_some() {
            return s;
        }
        match spec.cluster_ip.as_deref().and_then(parse_ip) {
            Some(ip) => s.cluster_ip = ip,
            None => {
                s.skip = Some("no clusterIP allocated yet".to_string());
                return s;
            }
        }
        s.external_ips = spec
            .external_ips
            .iter()
            .filter_map(|a| parse_ip(a))
            .collect();
        if spec.type_() == "LoadBalancer" {
            s.lb_ips = svc
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .map(|lb| {
                    lb.ingress
                        .iter()
                        .filter_map(|i| i.ip.as_deref().and_then(parse_ip))
                        .collect()
                })
                .unwrap_or_default();
        }
        if spec.session_affinity() == "ClientIP" {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
            s.affinity_timeout = Some(t);
        }
        s.ranges = spec
            .extra
            .get("loadBalancerSourceRanges")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .filter_map(|r| r.trim().parse::<Ipv4Net>().ok())
                    .map(|n| n.trunc())
                    .collect()
            })
            .unwrap_or_default();
        s.ports = spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(PortIn {
                    name: p.name.clone().unwrap_or_default(),
                    proto: p.protocol().parse::<Proto>().ok()?,
                    port: p.port,
                    node_port: p.node_port,
                })
            })
            .collect();
        s
    }
}

/// One address of an EndpointSlice endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EpIn {
    ip: Ipv4Addr,
    node: Option<Arc<str>>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

/// An EndpointSlice reduced to what the proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceIn {
    /// The service it belongs to (`kubernetes.io/service-name`), if it is an IPv4 slice of one.
    service: Option<SvcKey>,
    /// name, protocol (None: one the proxy does not know), port.
    ports: Vec<(String, Option<Proto>, Option<u16>)>,
    endpoints: Vec<EpIn>,
}

/// An endpoint of one service port as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ep {
    local: bool,
    ip: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// A frontend of a service port and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FeOut {
    fe: Frontend,
    verdict: Result<Target, Refusal>,
    external: bool,
    /// A LoadBalancer IP with `loadBalancerSourceRanges`.
    firewall: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortOut {
    label: String,
    proto: Proto,
    /// Endpoints in slot order (local ones first).
    order: Vec<Backend>,
    local: u32,
    timeout: Option<u32>,
    frontends: Vec<FeOut>,
    /// Addresses of the endpoints that serve, used or not (UDP ports only: conntrack cleanup).
    serving: Vec<Ipv4Addr>,
}

/// What one Service contributes to the plan, before frontend conflicts are settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fragment {
    skip: Option<String>,
    cluster_ip: Option<Ipv4Addr>,
    hairpin: Vec<Ipv4Addr>,
    announce: Vec<Ipv4Addr>,
    ranges: Vec<Ipv4Net>,
    ports: Vec<PortOut>,
    /// Health-check node port and the number of ready local endpoint addresses.
    health: Option<(u16, u32)>,
}

/// Who claims a frontend: service, port index, frontend index (the smallest keeps it).
type Claim = (SvcKey, u32, u32);

/// Element values as they were before the current batch (None: absent).
#[derive(Debug, Default)]
struct Journal {
    /// Not journalling: the plan is to be loaded whole (see [`Compiler::reload`]).
    off: bool,
    services: BTreeMap<Frontend, Option<Target>>,
    no_endpoints: BTreeMap<Frontend, Option<Refusal>>,
    backends: BTreeMap<(Frontend, u32), Option<Backend>>,
    affinity_ids: BTreeMap<Frontend, Option<u32>>,
    affinity_timeouts: BTreeMap<u32, Option<u32>>,
    cluster_ips: BTreeMap<Ipv4Addr, bool>,
    hairpin: BTreeMap<Ipv4Addr, bool>,
    firewall: BTreeMap<Frontend, Option<Vec<Ipv4Net>>>,
    udp_serving: BTreeMap<Frontend, Option<Vec<Ipv4Addr>>>,
    health_checks: BTreeMap<u16, Option<ServiceHealth>>,
    chains: BTreeMap<DynChain, bool>,
    announce: Option<BTreeSet<Ipv4Addr>>,
}

/// Sets (or with `None` removes) `k`, journalling its value before the batch unless `off`.
fn put<K: Ord + Clone, V: Clone>(
    map: &mut BTreeMap<K, V>,
    (journal, off): (&mut BTreeMap<K, Option<V>>, bool),
    k: K,
    v: Option<V>,
) -> Option<V> {
    let old = match v {
        Some(v) => map.insert(k.clone(), v),
        None => map.remove(&k),
    };
    if !off {
        journal.entry(k).or_insert_with(|| old.clone());
    }
    old
}

/// Counts a reference to `k`; the set holds the keys with at least one.
fn count<K: Ord + Clone + std::hash::Hash + Eq>(
    refs: &mut HashMap<K, u32>,
    set: &mut BTreeSet<K>,
    (journal, off): (&mut BTreeMap<K, bool>, bool),
    k: K,
    add: bool,
) {
    let n = refs.entry(k.clone()).or_insert(0);
    let before = *n > 0;
    if add {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
    }
    let after = *n > 0;
    if *n == 0 {
        refs.remove(&k);
    }
    if before != after {
        if after {
            set.insert(k.clone());
        } else {
            set.remove(&k);
        }
        if !off {
            journal.entry(k).or_insert(before);
        }
    }
}

/// The proxy state of one node, kept up to date incrementally. [`compile`](super::compile)
/// is this fed with every object at once.
#[derive(Debug)]
pub struct Compiler {
    node: NodeView,
    services: BTreeMap<SvcKey, SvcIn>,
    /// `(namespace, slice name)` -> slice.
    slices: HashMap<(String, String), SliceIn>,
    /// Service -> the slices that name it.
    slices_of: HashMap<SvcKey, Vec<(String, String)>>,
    fragments: HashMap<SvcKey, Fragment>,
    claims: HashMap<Frontend, Vec<Claim>>,
    /// Health-check node port -> the services that have it (the smallest keeps it).
    health_claims: BTreeMap<u16, Vec<SvcKey>>,
    /// Affinity ports `(service, port index)` -> the name their id hashes.
    affinity_ports: BTreeMap<(SvcKey, u32), (String, u32)>,
    affinity_ids: HashMap<(SvcKey, u32), u32>,
    cluster_ip_refs: HashMap<Ipv4Addr, u32>,
    hairpin_refs: HashMap<Ipv4Addr, u32>,
    announce_refs: HashMap<Ipv4Addr, u32>,
    chain_refs: HashMap<DynChain, u32>,
    chains: BTreeSet<DynChain>,
    node_names: HashSet<Arc<str>>,
    dirty: BTreeSet<SvcKey>,
    plan: ServicePlan,
    journal: Journal,
}

impl Compiler {
    /// A compiler for `node` holding no Service or slice yet (its plan has only the CIDRs).
    pub fn new(node: NodeView) -> Compiler {
        let plan = ServicePlan {
            cluster_cidr: Some(node.cluster_cidr),
            service_cidr: node.service_cidr,
            ..ServicePlan::default()
        };
        let mut c = Compiler {
            node: NodeView {
                nodes: Vec::new(),
                ..node
            },
            services: BTreeMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            fragments: HashMap::new(),
            claims: HashMap::new(),
            health_claims: BTreeMap::new(),
            affinity_ports: BTreeMap::new(),
            affinity_ids: HashMap::new(),
            cluster_ip_refs: HashMap::new(),
            hairpin_refs: HashMap::new(),
            announce_refs: HashMap::new(),
            chain_refs: HashMap::new(),
            chains: BTreeSet::new(),
            node_names: HashSet::new(),
            dirty: BTreeSet::new(),
            plan,
            journal: Journal::default(),
        };
        c.set_nodes(node.nodes.iter().cloned());
        c
    }

    /// The plan as of the last [`update`](Self::update). Its `ports` and `skipped` are empty:
    /// [`into_plan`](Self::into_plan) fills them.
    pub fn plan(&self) -> &ServicePlan {
        &self.plan
    }

    /// Every chain the plan's elements point at.
    pub fn chains(&self) -> &BTreeSet<DynChain> {
        &self.chains
    }

    /// How many Services the compiler holds (proxied or not).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    fn key(namespace: &str, name: &str) -> SvcKey {
        Arc::new((namespace.to_string(), name.to_string()))
    }

    /// Takes a Service (new or changed).
    pub fn upsert_service(&mut self, svc: &Service) {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let key = Self::key(&ns, &svc.metadata.name);
        let input = SvcIn::new(svc);
        if self.services.get(&key) != Some(&input) {
            self.services.insert(key.clone(), input);
            self.dirty.insert(key);
        }
    }

    /// Forgets a Service; its frontends go at the next [`update`](Self::update).
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        let key = Self::key(namespace, name);
        if self.services.remove(&key).is_some() {
            self.dirty.insert(key);
        }
    }

    /// Takes an EndpointSlice (new or changed).
    pub fn upsert_slice(&mut self, slice: &EndpointSlice) {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let id = (ns.clone(), slice.metadata.name.clone());
        let input = self.slice_input(&ns, slice);
        if self.slices.get(&id) == Some(&input) {
            return;
        }
        self.remove_slice(&id.0, &id.1);
        if let Some(svc) = &input.service {
            self.slices_of
                .entry(svc.clone())
                .or_default()
                .push(id.clone());
            self.dirty.insert(svc.clone());
        }
        self.slices.insert(id, input);
    }

    /// Forgets an EndpointSlice; its service's endpoints are recomputed at the next
    /// [`update`](Self::update).
    pub fn remove_slice(&mut self, namespace: &str, name: &str) {
        let id = (namespace.to_string(), name.to_string());
        let Some(old) = self.slices.remove(&id) else {
            return;
        };
        if let Some(svc) = old.service {
            if let Some(set) = self.slices_of.get_mut(&svc) {
                set.retain(|x| *x != id);
                if set.is_empty() {
                    self.slices_of.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    fn slice_input(&mut self, ns: &str, s: &EndpointSlice) -> SliceIn {
        let service = s
            .metadata
            .labels
            .get(LABEL_SERVICE_NAME)
            .filter(|_| s.address_type == "IPv4")
            .map(|svc| Self::key(ns, svc));
        let ports = s
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.protocol.as_deref().unwrap_or("TCP").parse::<Proto>().ok(),
                    p.port,
                )
            })
            .collect();
        let mut endpoints = Vec::new();
        for e in &s.endpoints {
            let node = e.node_name.as_deref().map(|n| self.intern(n));
            let c = &e.conditions;
            for a in &e.addresses {
                if let Some(ip) = parse_ip(a) {
                    endpoints.push(EpIn {
                        ip,
                        node: node.clone(),
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                    });
                }
            }
        }
        SliceIn {
            service,
            ports,
            endpoints,
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.node_names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.node_names.insert(n.clone());
        n
    }

    /// The nodes that share LoadBalancer announcements (those holding subnet leases).
    pub fn set_nodes(&mut self, nodes: impl IntoIterator<Item = String>) {
        let set: BTreeSet<String> = nodes.into_iter().collect();
        let list: Vec<String> = set.into_iter().collect();
        if list == self.node.nodes {
            return;
        }
        self.node.nodes = list;
        for (k, s) in &self.services {
            if !s.lb_ips.is_empty() {
                self.dirty.insert(k.clone());
            }
        }
    }

    /// Recompiles the services whose inputs changed since the last call and brings the plan
    /// up to date. Returns how many services it recompiled.
    pub fn update(&mut self) -> usize {
        let dirty = std::mem::take(&mut self.dirty);
        let mut touched: BTreeSet<Frontend> = BTreeSet::new();
        let mut health_touched: BTreeSet<u16> = BTreeSet::new();
        let mut affinity_changed = false;
        for key in &dirty {
            let new = self.services.get(key).map(|s| self.fragment(key, s));
            let old = self.fragments.remove(key);
            if old == new {
                if let Some(f) = old {
                    self.fragments.insert(key.clone(), f);
                }
                continue;
            }
            let (old_aff, new_aff) = (affinity_ports(old.as_ref()), affinity_ports(new.as_ref()));
            if old_aff != new_aff {
                affinity_changed = true;
                for (pi, _) in &old_aff {
                    self.affinity_ports.remove(&(key.clone(), *pi));
                }
                for (pi, v) in new_aff {
                    self.affinity_ports.insert((key.clone(), pi), v);
                }
            }
            if let Some(old) = &old {
                self.unlink(key, old, &mut touched);
                if let Some((port, _)) = old.health {
                    if let Some(c) = self.health_claims.get_mut(&port) {
                        c.retain(|k| k != key);
                        if c.is_empty() {
                            self.health_claims.remove(&port);
                        }
                    }
                    health_touched.insert(port);
                }
            }
            if let Some(new) = new {
                self.link(key, &new, &mut touched);
                if let Some((port, _)) = new.health {
                    let c = self.health_claims.entry(port).or_default();
                    let at = c.partition_point(|k| k < key);
                    c.insert(at, key.clone());
                    health_touched.insert(port);
                }
                self.fragments.insert(key.clone(), new);
            }
        }
        if affinity_changed {
            self.assign_affinity_ids(&mut touched);
        }
        for fe in &touched {
            self.write_frontend(*fe);
        }
        for port in health_touched {
            self.write_health(port);
        }
        dirty.len()
    }

    /// As [`update`](Self::update), for a plan that is then loaded whole: keeps no journal
    /// (which would hold every element) and forgets the one kept so far.
    pub fn reload(&mut self) -> usize {
        self.journal = Journal {
            off: true,
            ..Journal::default()
        };
        let n = self.update();
        self.journal = Journal::default();
        n
    }

    /// Compiles one Service on its own.
    fn fragment(&self, key: &SvcKey, s: &SvcIn) -> Fragment {
        let mut f = Fragment {
            skip: s.skip.clone(),
            ..Fragment::default()
        };
        if s.skip.is_some() {
            return f;
        }
        f.cluster_ip = Some(s.cluster_ip);
        f.ranges = s.ranges.clone();
        let slices: Vec<&SliceIn> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slices.get(id))
            .collect();
        if !s.lb_ips.is_empty() {
            let candidates = self.announce_candidates(&slices, s.etp_local);
            for ip in &s.lb_ips {
                if elect(*ip, &candidates) == Some(self.node.name.as_str()) {
                    f.announce.push(*ip);
                }
            }
        }
        let name = format!("{}/{}", key.0, key.1);
        let mut hairpin = BTreeSet::new();
        let mut local_ready = BTreeSet::new();
        for port in &s.ports {
            let label = if port.name.is_empty() {
                format!("{name}:{}", port.port)
            } else {
                format!("{name}:{}", port.name)
            };
            let eps = self.endpoints_for(&slices, &port.name, port.proto, s.publish);
            let cluster = usable(&eps, false);
            let local = usable(&eps, true);
            let mut order: Vec<Backend> = local
                .iter()
                .map(|e| Backend {
                    ip: e.ip,
                    port: e.port,
                })
                .collect();
            for e in &cluster {
                let b = Backend {
                    ip: e.ip,
                    port: e.port,
                };
                if !order.contains(&b) {
                    order.push(b);
                }
            }
            let n = u32::try_from(cluster.len()).unwrap_or(u32::MAX);
            let nl = u32::try_from(local.len()).unwrap_or(u32::MAX);
            hairpin.extend(eps.iter().filter(|e| e.local).map(|e| e.ip));
            local_ready.extend(eps.iter().filter(|e| e.local && e.ready).map(|e| e.ip));
            // Only UDP flows are ever cleaned up: TCP ports keep no list.
            let mut serving: Vec<Ipv4Addr> = eps
                .iter()
                .filter(|e| e.serving && port.proto == Proto::Udp)
                .map(|e| e.ip)
                .collect();
            serving.sort_unstable();
            serving.dedup();
            let affinity = s.affinity_timeout.is_some();
            let internal = if n == 0 {
                Err(Refusal::Reject)
            } else if !s.itp_local {
                Ok(Target::Lb { n, affinity })
            } else if nl == 0 {
                Err(Refusal::Drop)
            } else {
                Ok(Target::Lb { n: nl, affinity })
            };
            let external = if n == 0 {
                Err(Refusal::Reject)
            } else if s.etp_local {
                Ok(Target::ExtLocal {
                    n,
                    local: nl,
                    affinity,
                })
            } else {
                Ok(Target::Ext { n, affinity })
            };
            let proto = port.proto;
            let at = |ip: Ipv4Addr, port: u16| Frontend { ip, proto, port };
            let mut frontends = vec![FeOut {
                fe: at(s.cluster_ip, port.port),
                verdict: internal,
                external: false,
                firewall: false,
            }];
            // externalIPs, then LoadBalancer IPs (which loadBalancerSourceRanges filter).
            let external_ips = s.external_ips.iter().map(|ip| (ip, false));
            let lb_ips = s.lb_ips.iter().map(|ip| (ip, !s.ranges.is_empty()));
            for (ip, firewall) in external_ips.chain(lb_ips) {
                frontends.push(FeOut {
                    fe: at(*ip, port.port),
                    verdict: external,
                    external: true,
                    firewall,
                });
            }
            if let Some(np) = port.node_port.filter(|p| s.node_ports && *p > 0) {
                for ip in &self.node.addresses {
                    frontends.push(FeOut {
                        fe: at(*ip, np),
                        verdict: external,
                        external: true,
                        firewall: false,
                    });
                }
            }
            f.ports.push(PortOut {
                label,
                proto: port.proto,
                order,
                local: nl,
                timeout: s.affinity_timeout,
                frontends,
                serving,
            });
        }
        f.hairpin = hairpin.into_iter().collect();
        f.health = s
            .health_port
            .map(|p| (p, u32::try_from(local_ready.len()).unwrap_or(u32::MAX)));
        f
    }

    /// Nodes that may announce a Service's LoadBalancer IPs: every node, or with
    /// `externalTrafficPolicy: Local` the nodes with a ready endpoint (all nodes when none has
    /// one), like MetalLB's layer-2 mode.
    fn announce_candidates(&self, slices: &[&SliceIn], local_only: bool) -> Vec<String> {
        let mut all: Vec<String> = self.node.nodes.clone();
        if !all.contains(&self.node.name) {
            all.push(self.node.name.clone());
        }
        if local_only {
            let with_endpoints: BTreeSet<&str> = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.ready != Some(false))
                .filter_map(|e| e.node.as_deref())
                .collect();
            let some: Vec<String> = all
                .iter()
                .filter(|n| with_endpoints.contains(n.as_str()))
                .cloned()
                .collect();
            if !some.is_empty() {
                return some;
            }
        }
        all
    }

    /// The endpoints of one service port, from every slice of the service.
    fn endpoints_for(
        &self,
        slices: &[&SliceIn],
        port_name: &str,
        proto: Proto,
        publish: bool,
    ) -> Vec<Ep> {
        let mut out = BTreeSet::new();
        for s in slices {
            let Some((_, _, port)) = s
                .ports
                .iter()
                .find(|(n, p, _)| n == port_name && *p == Some(proto))
            else {
                continue;
            };
            let Some(port) = port.filter(|p| *p > 0) else {
                continue;
            };
            for e in &s.endpoints {
                let ready = publish || e.ready != Some(false);
                out.insert(Ep {
                    local: e.node.as_deref() == Some(self.node.name.as_str()),
                    ip: e.ip,
                    port,
                    ready,
                    serving: publish || e.serving.unwrap_or(ready),
                    terminating: e.terminating == Some(true),
                });
            }
        }
        let mut v: Vec<Ep> = out.into_iter().collect();
        v.sort_by(|a, b| (b.local, a.ip, a.port).cmp(&(a.local, b.ip, b.port)));
        v
    }

    /// Adds a fragment's claims and counted elements.
    fn link(&mut self, key: &SvcKey, f: &Fragment, touched: &mut BTreeSet<Frontend>) {
        self.refs(f, true);
        for (pi, fi, o) in frontends(f) {
            let c = self.claims.entry(o.fe).or_default();
            let claim = (key.clone(), pi, fi);
            let at = c.partition_point(|x| *x < claim);
            c.insert(at, claim);
            touched.insert(o.fe);
        }
    }

    /// Removes what [`link`](Self::link) added.
    fn unlink(&mut self, key: &SvcKey, f: &Fragment, touched: &mut BTreeSet<Frontend>) {
        self.refs(f, false);
        for (pi, fi, o) in frontends(f) {
            if let Some(c) = self.claims.get_mut(&o.fe) {
                c.retain(|x| !(x.0 == *key && x.1 == pi && x.2 == fi));
                if c.is_empty() {
                    self.claims.remove(&o.fe);
                }
            }
            touched.insert(o.fe);
        }
    }

    fn refs(&mut self, f: &Fragment, add: bool) {
        let j = &mut self.journal;
        let off = j.off;
        if let Some(ip) = f.cluster_ip {
            count(
                &mut self.cluster_ip_refs,
                &mut self.plan.cluster_ips,
                (&mut j.cluster_ips, off),
                ip,
                add,
            );
        }
        for ip in &f.hairpin {
            count(
                &mut self.hairpin_refs,
                &mut self.plan.hairpin,
                (&mut j.hairpin, off),
                *ip,
                add,
            );
        }
        if !f.announce.is_empty() && j.announce.is_none() && !off {
            j.announce = Some(self.plan.announce.clone());
        }
        for ip in &f.announce {
            count(
                &mut self.announce_refs,
                &mut self.plan.announce,
                (&mut BTreeMap::new(), true),
                *ip,
                add,
            );
        }
    }

    /// Numbers every affinity port, in service order: a hash of its name, moved on past ids
    /// that earlier ports took. Frontends whose id changed are touched.
    fn assign_affinity_ids(&mut self, touched: &mut BTreeSet<Frontend>) {
        let mut taken = BTreeSet::new();
        let mut ids = HashMap::with_capacity(self.affinity_ports.len());
        let mut timeouts = BTreeMap::new();
        for (k, (label, t)) in &self.affinity_ports {
            let id = affinity_id(label, &taken);
            taken.insert(id);
            ids.insert(k.clone(), id);
            timeouts.insert(id, *t);
            timeouts.insert(id | MASQ_MARK, *t);
            if self.affinity_ids.get(k) != Some(&id)
                && let Some(f) = self.fragments.get(&k.0)
                && let Some(p) = usize::try_from(k.1).ok().and_then(|i| f.ports.get(i))
            {
                touched.extend(p.frontends.iter().map(|o| o.fe));
            }
        }
        self.affinity_ids = ids;
        let stale: Vec<u32> = self
            .plan
            .affinity_timeouts
            .keys()
            .filter(|id| !timeouts.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            self.set_timeout(id, None);
        }
        for (id, t) in timeouts {
            if self.plan.affinity_timeouts.get(&id) != Some(&t) {
                self.set_timeout(id, Some(t));
            }
        }
    }

    fn set_timeout(&mut self, id: u32, t: Option<u32>) {
        let j = &mut self.journal;
        let old = put(
            &mut self.plan.affinity_timeouts,
            (&mut j.affinity_timeouts, j.off),
            id,
            t,
        );
        if let Some(old) = old {
            self.chain_ref(DynChain::Record { timeout: old }, false);
        }
        if let Some(t) = t {
            self.chain_ref(DynChain::Record { timeout: t }, true);
        }
    }

    fn chain_ref(&mut self, c: DynChain, add: bool) {
        let j = &mut self.journal;
        count(
            &mut self.chain_refs,
            &mut self.chains,
            (&mut j.chains, j.off),
            c,
            add,
        );
    }

    /// The claim that keeps `fe`, and what it says.
    fn winner(&self, fe: Frontend) -> Option<(&Claim, &PortOut, &FeOut)> {
        let claim = self.claims.get(&fe)?.first()?;
        let p = self
            .fragments
            .get(&claim.0)?
            .ports
            .get(usize::try_from(claim.1).ok()?)?;
        let o = p.frontends.get(usize::try_from(claim.2).ok()?)?;
        Some((claim, p, o))
    }

    /// Rewrites every element of `fe` from the claim that keeps it.
    fn write_frontend(&mut self, fe: Frontend) {
        let mut target = None;
        let mut refusal = None;
        let mut backends: Vec<Backend> = Vec::new();
        let mut affinity_id = None;
        let mut firewall = None;
        let mut udp_serving = None;
        if let Some((claim, p, o)) = self.winner(fe) {
            match o.verdict {
                Ok(t) => {
                    target = Some(t);
                    backends.clone_from(&p.order);
                    if p.timeout.is_some() {
                        // One id for every frontend of the port: a client keeps its endpoint
                        // whichever of them it comes through.
                        affinity_id = self.affinity_ids.get(&(claim.0.clone(), claim.1)).copied();
                    }
                }
                Err(r) => refusal = Some(r),
            }
            if fe.proto == Proto::Udp && !p.serving.is_empty() {
                udp_serving = Some(p.serving.clone());
            }
            if o.firewall {
                firewall = self.fragments.get(&claim.0).map(|f| f.ranges.clone());
            }
        }
        let j = &mut self.journal;
        let off = j.off;
        let old = put(&mut self.plan.services, (&mut j.services, off), fe, target);
        put(
            &mut self.plan.no_endpoints,
            (&mut j.no_endpoints, off),
            fe,
            refusal,
        );
        let old_slots: Vec<u32> = self
            .plan
            .backends
            .range((fe, 0)..=(fe, u32::MAX))
            .map(|((_, s), _)| *s)
            .collect();
        for s in old_slots {
            if usize::try_from(s).is_ok_and(|s| s >= backends.len()) {
                put(
                    &mut self.plan.backends,
                    (&mut j.backends, off),
                    (fe, s),
                    None,
                );
            }
        }
        for (s, b) in backends.into_iter().enumerate() {
            let s = u32::try_from(s).unwrap_or(u32::MAX);
            if self.plan.backends.get(&(fe, s)) != Some(&b) {
                put(
                    &mut self.plan.backends,
                    (&mut j.backends, off),
                    (fe, s),
                    Some(b),
                );
            }
        }
        put(
            &mut self.plan.affinity_ids,
            (&mut j.affinity_ids, off),
            fe,
            affinity_id,
        );
        put(
            &mut self.plan.firewall,
            (&mut j.firewall, off),
            fe,
            firewall,
        );
        if fe.proto == Proto::Udp {
            put(
                &mut self.plan.udp_serving,
                (&mut j.udp_serving, off),
                fe,
                udp_serving,
            );
        }
        if old != target {
            for c in old.iter().flat_map(Target::chains) {
                self.chain_ref(c, false);
            }
            for c in target.iter().flat_map(Target::chains) {
                self.chain_ref(c, true);
            }
        }
    }

    /// Rewrites the health check of `port` from the service that keeps it.
    fn write_health(&mut self, port: u16) {
        let value = self
            .health_claims
            .get(&port)
            .and_then(|c| c.first())
            .and_then(|key| {
                let (_, n) = self.fragments.get(key)?.health?;
                Some(ServiceHealth {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    local_endpoints: n,
                })
            });
        let j = &mut self.journal;
        if self.plan.health_checks.get(&port) != value.as_ref() {
            put(
                &mut self.plan.health_checks,
                (&mut j.health_checks, j.off),
                port,
                value,
            );
        }
    }

    /// What changed since the last call: the element operations (deletes first), chains to
    /// create and to delete, and the conntrack and affinity records that became stale. Call
    /// [`update`](Self::update) first.
    pub fn take_diff(&mut self) -> ServiceDiff {
        let j = std::mem::take(&mut self.journal);
        let p = &self.plan;
        let mut d = ServiceDiff::default();
        for (c, was) in &j.chains {
            match (*was, self.chains.contains(c)) {
                (false, true) => d.add_chains.push(*c),
                (true, false) => d.delete_chains.push(*c),
                _ => {}
            }
        }
        let ops = &mut d.ops;
        journal_ops(
            maps::SERVICES,
            &j.services,
            &p.services,
            |k| Key::Frontend(*k),
            target_value,
            ops,
        );
        journal_ops(
            maps::NO_ENDPOINTS,
            &j.no_endpoints,
            &p.no_endpoints,
            |k| Key::Frontend(*k),
            refusal_value,
            ops,
        );
        journal_ops(
            maps::BACKENDS,
            &j.backends,
            &p.backends,
            |(f, s)| Key::Slot(*f, *s),
            |b| Value::Backend(*b),
            ops,
        );
        journal_ops(
            maps::AFFINITY_IDS,
            &j.affinity_ids,
            &p.affinity_ids,
            |k| Key::Frontend(*k),
            |id| Value::Mark(*id),
            ops,
        );
        journal_ops(
            maps::AFFINITY_TIMEOUTS,
            &j.affinity_timeouts,
            &p.affinity_timeouts,
            |k| Key::Id(*k),
            |t| Value::Goto(DynChain::Record { timeout: *t }.name()),
            ops,
        );
        journal_set_ops(
            maps::CLUSTER_IPS,
            &j.cluster_ips,
            &p.cluster_ips,
            |ip| Key::Ip(*ip),
            ops,
        );
        journal_set_ops(
            maps::HAIRPIN,
            &j.hairpin,
            &p.hairpin,
            |ip| Key::IpPair(*ip, *ip),
            ops,
        );
        ops.sort_by_key(|op| matches!(op, ElemOp::Add { .. }));
        d.announce_changed = j.announce.as_ref().is_some_and(|a| *a != p.announce);
        d.structure_changed = j
            .firewall
            .iter()
            .any(|(fe, old)| old.as_ref() != p.firewall.get(fe));
        // Endpoints that left a frontend: stale UDP flows, forgotten affinity records.
        let mut stale_udp = BTreeSet::new();
        let mut gone_by_fe: BTreeMap<Frontend, BTreeSet<Backend>> = BTreeMap::new();
        for ((fe, _), old) in &j.backends {
            if let Some(b) = old {
                gone_by_fe.entry(*fe).or_default().insert(*b);
            }
        }
        for (fe, gone) in &mut gone_by_fe {
            let now: BTreeSet<Backend> = p
                .backends
                .range((*fe, 0)..=(*fe, u32::MAX))
                .map(|(_, b)| *b)
                .collect();
            gone.retain(|b| !now.contains(b));
            let id = match j.affinity_ids.get(fe) {
                Some(old) => *old,
                None => p.affinity_ids.get(fe).copied(),
            };
            if let Some(id) = id
                && !gone.is_empty()
                && !d.affinity_gc.iter().any(|(i, _)| *i == id)
            {
                d.affinity_gc.push((id, gone.iter().copied().collect()));
            }
        }
        // UDP flows of an endpoint go when it stops serving (kube-proxy's rule): one that
        // terminates but still serves keeps them, though it takes no new ones.
        for (fe, old) in &j.udp_serving {
            let now = p.udp_serving.get(fe).map(Vec::as_slice).unwrap_or_default();
            for ip in old.iter().flatten().filter(|ip| !now.contains(ip)) {
                stale_udp.insert((*fe, *ip));
            }
        }
        d.stale_udp = stale_udp.into_iter().collect();
        d.health_changed = j
            .health_checks
            .iter()
            .any(|(port, old)| old.as_ref() != p.health_checks.get(port));
        d.revived_udp = j
            .services
            .iter()
            .filter(|(fe, old)| {
                fe.proto == Proto::Udp && old.is_none() && p.services.contains_key(fe)
            })
            .map(|(fe, _)| *fe)
            .collect();
        d
    }

    /// The whole plan, with `ports` and `skipped` filled for explanations.
    pub fn into_plan(mut self) -> ServicePlan {
        self.reload();
        let mut ports = Vec::new();
        let mut skipped = Vec::new();
        for key in self.services.keys() {
            let Some(f) = self.fragments.get(key) else {
                continue;
            };
            if let Some(why) = &f.skip {
                skipped.push((format!("{}/{}", key.0, key.1), why.clone()));
                continue;
            }
            for (pi, p) in f.ports.iter().enumerate() {
                let pi = u32::try_from(pi).unwrap_or(u32::MAX);
                let mut placed = Vec::new();
                for (fi, o) in p.frontends.iter().enumerate() {
                    let fi = u32::try_from(fi).unwrap_or(u32::MAX);
                    let wins = self
                        .claims
                        .get(&o.fe)
                        .and_then(|c| c.first())
                        .is_some_and(|c| *c == (key.clone(), pi, fi));
                    if wins {
                        placed.push(o.fe);
                    } else {
                        skipped.push((
                            p.label.clone(),
                            format!("{} is already used by another service", o.fe),
                        ));
                    }
                }
                ports.push(ProxiedPort {
                    service: p.label.clone(),
                    proto: p.proto,
                    frontends: placed,
                    endpoints: p.order.clone(),
                    local: p.local,
                    affinity_timeout: p.timeout,
                });
            }
        }
        let mut plan = self.plan;
        plan.ports = ports;
        plan.skipped = skipped;
        plan
    }
}

/// Every frontend of a fragment with its port and frontend index.
fn frontends(f: &Fragment) -> impl Iterator<Item = (u32, u32, &FeOut)> {
    f.ports.iter().enumerate().flat_map(|(pi, p)| {
        p.frontends.iter().enumerate().map(move |(fi, o)| {
            (
                u32::try_from(pi).unwrap_or(u32::MAX),
                u32::try_from(fi).unwrap_or(u32::MAX),
                o,
            )
        })
    })
}

/// The affinity ports of a fragment: port index -> (the name its id hashes, timeout).
fn affinity_ports(f: Option<&Fragment>) -> Vec<(u32, (String, u32))> {
    f.into_iter()
        .flat_map(|f| f.ports.iter().enumerate())
        .filter_map(|(pi, p)| {
            let t = p.timeout?;
            Some((
                u32::try_from(pi).unwrap_or(u32::MAX),
                (format!("{}/{}", p.label, p.proto), t),
            ))
        })
        .collect()
}

/// The operations that take the elements journalled in `old` to their values in `now`.
fn journal_ops<K: Ord, V: PartialEq>(
    map: &'static str,
    old: &BTreeMap<K, Option<V>>,
    now: &BTreeMap<K, V>,
    key: impl Fn(&K) -> Key,
    value: impl Fn(&V) -> Value,
    ops: &mut Vec<ElemOp>,
) {
    let mut adds = Vec::new();
    for (k, was) in old {
        let is = now.get(k);
        if was.as_ref() == is {
            continue;
        }
        if was.is_some() {
            ops.push(ElemOp::Delete { map, key: key(k) });
        }
        if let Some(v) = is {
            adds.push(ElemOp::Add {
                map,
                key: key(k),
                value: value(v),
            });
        }
    }
    ops.extend(adds);
}

fn journal_set_ops<K: Ord>(
    map: &'static str,
    old: &BTreeMap<K, bool>,
    now: &BTreeSet<K>,
    key: impl Fn(&K) -> Key,
    ops: &mut Vec<ElemOp>,
) {
    let mut adds = Vec::new();
    for (k, was) in old {
        match (*was, now.contains(k)) {
            (true, false) => ops.push(ElemOp::Delete { map, key: key(k) }),
            (false, true) => adds.push(ElemOp::Add {
                map,
                key: key(k),
                value: Value::None,
            }),
            _ => {}
        }
    }
    ops.extend(adds);
}

/// Ready endpoints (only local ones if `local_only`), or, when there is none, the serving
/// terminating ones (kube-proxy's fallback).
fn usable(eps: &[Ep], local_only: bool) -> Vec<Ep> {
    let scope = || eps.iter().filter(move |e| !local_only || e.local);
    // kube-proxy's IsReady() is the ready condition alone (a terminating pod is not ready,
    // unless publishNotReadyAddresses keeps it so).
    let ready: Vec<Ep> = scope().filter(|e| e.ready).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    scope()
        .filter(|e| e.serving && e.terminating)
        .copied()
        .collect()
}

/// A stable, non-zero id for a service port: its affinity key in conntrack marks. FNV-1a of
/// the name, without the masquerade bit (which shares the conntrack mark).
fn affinity_id(name: &str, taken: &BTreeSet<u32>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let clean = |x: u32| (x & !MASQ_MARK & 0x7fff_ffff).max(1);
    let mut id = clean(h);
    while taken.contains(&id) {
        id = clean(id.wrapping_add(1));
    }
    id
}
