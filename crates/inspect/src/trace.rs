//! `flatnet trace SRC DST`: where the first packet of a flow goes and why, computed from the
//! store with the same compilers the agents use (`services` for the service proxy of the
//! node the packet enters, `routes` for that node's routes to other nodes' pod subnets,
//! `netpol` for NetworkPolicy), so what is explained is what the dataplane was given.
//!
//! The route hop: the node's [`NodePlan`] compiled by [`routes::compile`] from the subnet
//! leases, the network config's backend and the node's underlay (its agent status's
//! `underlayIP`, else its lease's; the lab's underlay device), plus
//! [`routes::plan::service_route`] when there is a service CIDR; the packet takes the route
//! of the longest prefix holding its destination. The node's own subnet has no route in the
//! plan: the CNI plugin installs a /32 per pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use model::{EndpointSlice, Kind, Object, Service};
use routes::plan::Route;
use routes::{NodePlan, UnderlayInfo};
use serde::Serialize;
use serde_json::Value;
use services::{NodeView, Proto, Trace, TraceOutcome, compile};
use store::contract::{self, AgentStatus, ConfigError, Lease, NetworkConfig, keys};
use store::{Store, StoreError};

/// Why a flow cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The store failed.
    #[error("etcd: {0}")]
    Store(#[from] StoreError),
    /// The network config is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--protocol` names no protocol.
    #[error("--protocol {0}: use TCP, UDP or SCTP")]
    Protocol(String),
    /// The pod exists but has no address.
    #[error("pod {pod} has no IP yet")]
    PodWithoutIp {
        /// `namespace/name`.
        pod: String,
    },
    /// The service has no cluster IP to send to.
    #[error("service {service} has no clusterIP (headless or ExternalName)")]
    ServiceWithoutClusterIp {
        /// `namespace/name`.
        service: String,
    },
    /// Nothing of that name or address.
    #[error("{given}: not a pod, a service, a node or an IPv4 address")]
    Unknown {
        /// What the user wrote.
        given: String,
    },
}

/// One side of the flow, as resolved from the command line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    /// What the user wrote.
    pub given: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// `namespace/name` when it is a pod.
    pub pod: Option<String>,
    /// The node the pod runs on, or the node whose address this is.
    pub node: Option<String>,
}

/// The answer: the proxy's decision on the entry node, then per endpoint the route and the
/// NetworkPolicy verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Where the flow comes from.
    pub src: Party,
    /// Where it is sent to.
    pub dst: Party,
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The node whose service proxy sees the packet first.
    pub entry_node: Option<String>,
    /// The entry node's service proxy decision.
    pub proxy: Option<Trace>,
    /// One per place the packet may end up.
    pub hops: Vec<Hop>,
}

/// The packet's way to one possible final destination.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// `namespace/name` of the pod, else the address.
    pub to: String,
    /// The final destination address (after DNAT).
    pub ip: Ipv4Addr,
    /// The final destination port (after DNAT).
    pub port: u16,
    /// The way there, in words.
    pub route: String,
    /// The route the node the packet leaves from takes, as its route compiler made it; None
    /// when that node is not known or the destination is in the node's own subnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_route: Option<NodeRoute>,
    /// The NetworkPolicy explanation.
    pub policy: Option<String>,
    /// The NetworkPolicy verdict; None when policy could not be evaluated.
    pub allowed: Option<bool>,
}

/// A route of a node's compiled [`NodePlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoute {
    /// The node whose plan holds the route.
    pub node: String,
    /// The route (`dst`, `via`, `dev`, `onlink`).
    #[serde(flatten)]
    pub route: Route,
}

/// The subnet leases, the network config and the agents' status: what a node's route plan is
/// compiled from.
pub struct RouteInputs {
    /// The network config (backend, service CIDR).
    pub config: NetworkConfig,
    /// Every decodable subnet lease.
    pub leases: Vec<Lease>,
    /// The agents' statuses by node (those that decode).
    pub statuses: BTreeMap<String, AgentStatus>,
    /// The underlay device of a node whose agent does not report one (the lab's).
    pub underlay_dev: String,
}

impl RouteInputs {
    /// The lease `node` holds: the one its agent reports, else its first.
    pub fn own_lease(&self, node: &str) -> Option<&Lease> {
        let mine = || self.leases.iter().filter(|l| l.attrs.node == node);
        let reported = self.statuses.get(node).map(|s| s.routes.cidr);
        mine()
            .find(|l| Some(l.cidr) == reported)
            .or_else(|| mine().next())
    }

    /// The plan `node`'s agent compiles: [`routes::compile`] of its lease against every
    /// other, plus [`routes::plan::service_route`] when there is a service CIDR. None when the
    /// node holds no lease.
    pub fn plan(&self, node: &str) -> Option<NodePlan> {
        let own = self.own_lease(node)?;
        let status = self.statuses.get(node);
        let backend = self.config.backend;
        let underlay = UnderlayInfo {
            dev: status
                .map(|s| s.routes.underlay_dev.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| self.underlay_dev.clone()),
            ip: status.map_or(own.attrs.underlay_ip, |s| s.routes.underlay_ip),
            mtu: status.map_or(1500, |s| s.routes.mtu + backend.overhead()),
        };
        let remotes: Vec<Lease> = self
            .leases
            .iter()
            .filter(|l| l.cidr != own.cidr)
            .cloned()
            .collect();
        let mut plan = routes::compile(own, &remotes, backend, &underlay);
        if let Some(svc) = self.config.service_cidr {
            plan.routes
                .insert(routes::plan::service_route(svc, &underlay));
        }
        Some(plan)
    }

    /// The route `node` takes to `ip`: the longest prefix of its plan holding `ip`.
    pub fn route(&self, node: &str, ip: Ipv4Addr) -> Option<NodeRoute> {
        let plan = self.plan(node)?;
        longest_match(&plan, ip).map(|route| NodeRoute {
            node: node.to_string(),
            route: route.clone(),
        })
    }

    /// Why the compiler left out the lease holding `ip` from `node`'s plan, if it did.
    fn left_out(&self, node: &str, ip: Ipv4Addr) -> Option<String> {
        let own = self.own_lease(node)?;
        let remote = self
            .leases
            .iter()
            .find(|l| l.cidr.contains(&ip) && l.cidr != own.cidr)?;
        routes::plan::check_remote(own, remote, self.config.backend)
            .err()
            .map(|e| e.to_string())
    }
}

/// The route of `plan` with the longest prefix holding `ip`.
pub fn longest_match(plan: &NodePlan, ip: Ipv4Addr) -> Option<&Route> {
    plan.routes
        .iter()
        .filter(|r| r.dst.contains(&ip))
        .max_by_key(|r| r.dst.prefix_len())
}

/// `10.244.1.0/24 via 172.20.0.12 dev eth0`, as `ip route` writes it.
pub fn route_text(r: &Route) -> String {
    let mut s = format!("{}", r.dst);
    if !r.via.is_unspecified() {
        s.push_str(&format!(" via {}", r.via));
    }
    s.push_str(&format!(" dev {}", r.dev));
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

/// The route hop in words: the route, and for VXLAN where its gateway's frames go.
fn route_words(plan: &NodePlan, r: &Route) -> String {
    let mut s = format!("route {}", route_text(r));
    let vtep = plan
        .neighbours
        .iter()
        .find(|n| n.dev == r.dev && n.ip == r.via)
        .and_then(|n| {
            plan.fdb
                .iter()
                .find(|f| f.dev == n.dev && f.mac == n.mac)
                .map(|f| (n.mac, f.dst))
        });
    if let Some((mac, dst)) = vtep {
        s.push_str(&format!(" ({} is {mac}, VXLAN to {dst})", r.via));
    }
    s
}

fn decode_all<T: serde::de::DeserializeOwned>(kvs: &[store::KeyValue], prefix: &str) -> Vec<T> {
    kvs.iter()
        .filter_map(|kv| {
            let mut v: Value = kv.decode().ok()?;
            if let Some(ns) = kv
                .key
                .strip_prefix(prefix)
                .and_then(|r| r.split('/').next())
            {
                v["metadata"]["namespace"] = Value::String(ns.to_string());
            }
            serde_json::from_value(v).ok()
        })
        .collect()
}

/// Resolves `ns/pod`, a pod name (namespace `default`), a service `ns/name` or `name`, a node
/// name, or an IP.
fn resolve(
    given: &str,
    pods: &[Value],
    services: &[Service],
    nodes: &BTreeMap<String, Ipv4Addr>,
) -> Result<Party, TraceError> {
    let party = |ip, pod: Option<String>, node: Option<String>| Party {
        given: given.to_string(),
        ip,
        pod,
        node,
    };
    let pod_party = |p: &Value| -> Option<Party> {
        let ip = p.pointer("/status/podIP")?.as_str()?.parse().ok()?;
        let ns = p.pointer("/metadata/namespace")?.as_str()?;
        let name = p.pointer("/metadata/name")?.as_str()?;
        let node = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .map(str::to_string);
        Some(party(ip, Some(format!("{ns}/{name}")), node))
    };
    if let Ok(ip) = given.parse::<Ipv4Addr>() {
        if let Some(p) = pods.iter().find_map(|p| {
            (p.pointer("/status/podIP").and_then(Value::as_str) == Some(given))
                .then(|| pod_party(p))
                .flatten()
        }) {
            return Ok(p);
        }
        let node = nodes
            .iter()
            .find(|(_, a)| **a == ip)
            .map(|(n, _)| n.clone());
        return Ok(party(ip, None, node));
    }
    if let Some(addr) = nodes.get(given) {
        return Ok(party(*addr, None, Some(given.to_string())));
    }
    let (ns, name) = given.split_once('/').unwrap_or(("default", given));
    if let Some(p) = pods.iter().find(|p| {
        p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            && p.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
    }) {
        return pod_party(p).ok_or_else(|| TraceError::PodWithoutIp {
            pod: format!("{ns}/{name}"),
        });
    }
    if let Some(s) = services
        .iter()
        .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name == name)
    {
        let ip = s
            .spec
            .cluster_ip
            .as_deref()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| TraceError::ServiceWithoutClusterIp {
                service: format!("{ns}/{name}"),
            })?;
        return Ok(party(ip, None, None));
    }
    Err(TraceError::Unknown {
        given: given.to_string(),
    })
}

/// Computes the report for a flow from `src` to `dst`.
pub async fn trace(
    store: &impl Store,
    src: &str,
    dst: &str,
    port: Option<u16>,
    protocol: &str,
) -> Result<Report, TraceError> {
    let proto = protocol
        .parse::<Proto>()
        .map_err(|_| TraceError::Protocol(protocol.to_string()))?;
    let list = |kind: Kind| async move {
        let prefix = keys::kind_prefix(kind);
        let (kvs, _) = store.list(&prefix).await?;
        Ok::<_, StoreError>((kvs, prefix))
    };
    let (svc_kvs, svc_prefix) = list(Kind::Service).await?;
    let (slice_kvs, slice_prefix) = list(Kind::EndpointSlice).await?;
    let (pod_kvs, pod_prefix) = list(Kind::Pod).await?;
    let (lease_kvs, _) = store.list(keys::SUBNETS).await?;
    let config = contract::read_config(store).await?;
    let (statuses, _) = contract::read_statuses(store).await?;
    let services: Vec<Service> = decode_all(&svc_kvs, &svc_prefix);
    let slices: Vec<EndpointSlice> = decode_all(&slice_kvs, &slice_prefix);
    let pods: Vec<Value> = decode_all(&pod_kvs, &pod_prefix);
    let leases: Vec<Lease> = contract::decode_leases(&lease_kvs)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let mut nodes: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for l in &leases {
        nodes.insert(l.attrs.node.clone(), l.attrs.underlay_ip);
    }
    let inputs = RouteInputs {
        statuses: statuses
            .into_iter()
            .filter_map(|(node, s)| match s {
                Ok(s) => Some((node, s)),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "agent status does not decode: its lease's underlay IP is used");
                    None
                }
            })
            .collect(),
        config,
        leases,
        underlay_dev: lab::topology::UNDERLAY_DEV.to_string(),
    };
    let cluster_cidr = inputs.config.pod_cidr;
    let service_cidr = inputs.config.service_cidr;
    let src = resolve(src, &pods, &services, &nodes)?;
    let dst = resolve(dst, &pods, &services, &nodes)?;
    let port = match port {
        Some(p) => p,
        None => services
            .iter()
            .find(|s| s.spec.cluster_ip.as_deref() == Some(&dst.ip.to_string()))
            .and_then(|s| s.spec.ports.first().map(|p| p.port))
            .unwrap_or(80),
    };
    let view = |node: &str| NodeView {
        name: node.to_string(),
        addresses: nodes.get(node).copied().into_iter().collect(),
        cluster_cidr,
        service_cidr,
        nodes: nodes.keys().cloned().collect(),
    };
    // The node whose proxy sees the packet first: the source's node; for a source outside the
    // cluster, the node that owns the destination address (a node IP, or the node announcing
    // a LoadBalancer IP).
    let entry_node = match &src.node {
        Some(n) => Some(n.clone()),
        None => nodes
            .iter()
            .find(|(_, a)| **a == dst.ip)
            .map(|(n, _)| n.clone())
            .or_else(|| {
                nodes
                    .keys()
                    .find(|n| {
                        compile(&view(n), &services, &slices)
                            .announce
                            .contains(&dst.ip)
                    })
                    .cloned()
            }),
    };
    let from_node = src.pod.is_none() && src.node.is_some();
    let proxy = entry_node.as_ref().map(|n| {
        compile(&view(n), &services, &slices).trace(src.ip, from_node, dst.ip, proto, port)
    });
    // Where the packet may end up.
    let targets: Vec<(Ipv4Addr, u16)> = match proxy.as_ref().map(|t| &t.outcome) {
        Some(TraceOutcome::Dnat { endpoints, .. }) => {
            endpoints.iter().map(|b| (b.ip, b.port)).collect()
        }
        Some(TraceOutcome::Refused { .. } | TraceOutcome::Dropped { .. }) => Vec::new(),
        Some(TraceOutcome::NotAService) | None => vec![(dst.ip, port)],
    };
    let objects: Vec<Object> = {
        let mut all = Vec::new();
        for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
            all.extend(list(kind).await?.0);
        }
        all.iter()
            .filter_map(|kv| kv.decode::<Value>().ok())
            .filter_map(|v| Object::from_json(v).ok())
            .collect()
    };
    let policy = netpol::Cluster::from_objects(&objects).map(|c| c.compile());
    let pod_of = |ip: Ipv4Addr| {
        pods.iter().find_map(|p| {
            (p.pointer("/status/podIP").and_then(Value::as_str) == Some(&ip.to_string())).then(
                || {
                    (
                        format!(
                            "{}/{}",
                            p.pointer("/metadata/namespace")
                                .and_then(Value::as_str)
                                .unwrap_or(""),
                            p.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                        ),
                        p.pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    )
                },
            )
        })
    };
    let endpoint = |pod: &Option<String>, ip: Ipv4Addr| match pod {
        Some(p) => {
            let (ns, name) = p.split_once('/').unwrap_or(("", p));
            netpol::Endpoint::Pod(netpol::PodRef::new(ns, name))
        }
        None => netpol::Endpoint::Ip(ip),
    };
    let mut hops = Vec::new();
    for (ip, p) in targets {
        let (to, to_node) = match pod_of(ip) {
            Some((name, node)) => (name, node),
            None => (ip.to_string(), None),
        };
        let from = entry_node.clone().or_else(|| src.node.clone());
        let (route, node_route) = route_hop(&inputs, from.as_deref(), to_node.as_deref(), ip);
        let (policy_text, allowed) = match &policy {
            Ok(cp) => {
                let dst_pod = pod_of(ip).map(|(n, _)| n);
                // A masqueraded packet reaches the endpoint from the entry node's address.
                let masqueraded = matches!(
                    proxy.as_ref().map(|t| &t.outcome),
                    Some(TraceOutcome::Dnat {
                        masquerade: true,
                        ..
                    })
                );
                let entry_ip = entry_node.as_ref().and_then(|n| nodes.get(n)).copied();
                let flow_src = match (masqueraded, entry_ip) {
                    (true, Some(ip)) => netpol::Endpoint::Ip(ip),
                    _ => endpoint(&src.pod, src.ip),
                };
                let flow = netpol::Flow {
                    src: flow_src,
                    dst: endpoint(&dst_pod, ip),
                    port: p,
                    protocol: proto,
                };
                match cp.verdict(&flow) {
                    Ok(v) => (Some(v.explain()), Some(v.allowed)),
                    Err(e) => (Some(format!("cannot evaluate NetworkPolicy: {e}")), None),
                }
            }
            Err(e) => (Some(format!("cannot compile NetworkPolicy: {e}")), None),
        };
        hops.push(Hop {
            to,
            ip,
            port: p,
            route,
            node_route,
            policy: policy_text,
            allowed,
        });
    }
    Ok(Report {
        src,
        dst,
        port,
        protocol: proto.to_string(),
        entry_node,
        proxy,
        hops,
    })
}

/// The way from node `from` (None: not known) to `ip` (on node `to_node`, when it is a pod's),
/// in words, and the route of `from`'s compiled plan that it takes.
fn route_hop(
    inputs: &RouteInputs,
    from: Option<&str>,
    to_node: Option<&str>,
    ip: Ipv4Addr,
) -> (String, Option<NodeRoute>) {
    let holder = inputs.leases.iter().find(|l| l.cidr.contains(&ip));
    let Some(a) = from else {
        let text = match (to_node, holder) {
            (Some(b), _) => format!("to {b}, then the pod's veth"),
            (None, Some(l)) => format!("to {} (holds {}) — no pod has {ip}", l.attrs.node, l.cidr),
            (None, None) if inputs.config.pod_cidr.contains(&ip) => {
                format!("{ip} is in the pod CIDR but no node holds its subnet")
            }
            (None, None) => format!("{ip} is outside the cluster: routed out by the node"),
        };
        return (text, None);
    };
    let own = inputs.own_lease(a);
    if to_node == Some(a) || own.is_some_and(|l| l.cidr.contains(&ip)) {
        let text = match (to_node, own) {
            (Some(_), _) | (None, None) => {
                format!("delivered on {a} through the pod's veth (/32 route)")
            }
            (None, Some(l)) => format!("on {a}'s own subnet {} — no pod has {ip}", l.cidr),
        };
        return (text, None);
    }
    let Some(plan) = inputs.plan(a) else {
        return (
            format!("{a} holds no subnet lease, so it has no routes to other nodes"),
            None,
        );
    };
    let Some(r) = longest_match(&plan, ip) else {
        let text = match (holder, inputs.left_out(a, ip)) {
            (Some(l), Some(why)) => format!(
                "{a} has no route to {ip}: its route compiler leaves out the lease of {} ({}): {why}",
                l.cidr, l.attrs.node
            ),
            (Some(l), None) => format!(
                "{a} has no route to {ip}: its route compiler leaves out the lease of {} ({}), which overlaps or repeats an earlier one",
                l.cidr, l.attrs.node
            ),
            (None, _) if inputs.config.pod_cidr.contains(&ip) => {
                format!("{ip} is in the pod CIDR but no node holds its subnet")
            }
            (None, _) => format!("{ip} is outside the cluster: routed out by the node"),
        };
        return (text, None);
    };
    let words = route_words(&plan, r);
    let backend = inputs.config.backend;
    let text = match (to_node, holder) {
        (Some(b), _) => {
            let addr = inputs
                .leases
                .iter()
                .find(|l| l.attrs.node == b)
                .map(|l| l.attrs.underlay_ip.to_string())
                .unwrap_or_default();
            format!("{a} -> {b} ({addr}) over the {backend} backend: {words}, then the pod's veth")
        }
        (None, Some(l)) => format!(
            "{a} -> {} (holds {}) over the {backend} backend: {words} — no pod has {ip}",
            l.attrs.node, l.cidr
        ),
        (None, None) => format!("{a}: {words}"),
    };
    (
        text,
        Some(NodeRoute {
            node: a.to_string(),
            route: r.clone(),
        }),
    )
}

impl Report {
    /// Plain words, one decision per line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let who = |p: &Party| match (&p.pod, &p.node) {
            (Some(pod), Some(n)) => format!("pod {pod} ({}, on {n})", p.ip),
            (Some(pod), None) => format!("pod {pod} ({})", p.ip),
            (None, Some(n)) => format!("node {n} ({})", p.ip),
            (None, None) => format!("{} ({})", p.given, p.ip),
        };
        s.push_str(&format!(
            "flow: {} -> {} port {}/{}\n",
            who(&self.src),
            who(&self.dst),
            self.port,
            self.protocol
        ));
        match (&self.entry_node, &self.proxy) {
            (Some(n), Some(t)) => {
                s.push_str(&format!("service proxy on {n}:\n"));
                for step in &t.steps {
                    s.push_str(&format!("  - {step}\n"));
                }
                match &t.outcome {
                    TraceOutcome::Refused { why } => s.push_str(&format!("result: REFUSED ({why})\n")),
                    TraceOutcome::Dropped { why } => s.push_str(&format!("result: DROPPED ({why})\n")),
                    TraceOutcome::Dnat { masquerade, .. } => s.push_str(&format!(
                        "result: DNAT{}\n",
                        if *masquerade { ", source masqueraded to the node" } else { ", source address kept" }
                    )),
                    TraceOutcome::NotAService => {}
                }
            }
            _ => s.push_str("no node of the cluster sees this packet first (the destination is not a node or LoadBalancer address)\n"),
        }
        for h in &self.hops {
            s.push_str(&format!("to {} ({}:{}): {}\n", h.to, h.ip, h.port, h.route));
            if let Some(p) = &h.policy {
                for line in p.lines() {
                    s.push_str(&format!("  policy: {line}\n"));
                }
            }
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;
    use store::MemStore;
    use store::contract::{Backend, LeaseAttrs};

    const UNDERLAY: [Ipv4Addr; 2] = [Ipv4Addr::new(172, 20, 0, 11), Ipv4Addr::new(172, 20, 0, 12)];

    async fn put(s: &MemStore, key: &str, v: Value) {
        s.put(key, serde_json::to_vec(&v).unwrap()).await.unwrap();
    }

    fn lease(i: usize) -> Lease {
        Lease {
            cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            attrs: LeaseAttrs::new(&format!("node{}", i + 1), UNDERLAY[i], Backend::HostGw),
        }
    }

    /// Two nodes with a pod each, as the agents and the kubelets leave the store.
    async fn cluster(backend: Backend) -> MemStore {
        let s = MemStore::new();
        let backend_name = backend.to_string();
        put(
            &s,
            keys::CONFIG,
            json!({"podCIDR": "10.244.0.0/16", "nodePrefixLength": 24,
                   "serviceCIDR": "10.96.0.0/16", "backend": backend_name}),
        )
        .await;
        for (i, underlay) in UNDERLAY.into_iter().enumerate() {
            let node = format!("node{}", i + 1);
            let attrs = LeaseAttrs::new(&node, underlay, backend);
            let cidr = format!("10.244.{i}.0/24");
            put(
                &s,
                &keys::subnet(&cidr),
                serde_json::to_value(&attrs).unwrap(),
            )
            .await;
            put(
                &s,
                &keys::agent(&node),
                json!({"node": node, "healthy": true, "appliedRevision": 1, "cidr": cidr,
                       "backend": backend_name, "underlayIP": underlay, "mtu": 1500 - backend.overhead(),
                       "heartbeat": 0, "lastError": null}),
            )
            .await;
            let pod = format!("p{}", i + 1);
            put(
                &s,
                &keys::object(Kind::Pod, Some("default"), &pod),
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod, "namespace": "default"},
                       "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                       "status": {"phase": "Running", "podIP": format!("10.244.{i}.5")}}),
            )
            .await;
        }
        s
    }

    /// What node1's agent compiles, independently of `trace`.
    fn compiled_for_node1(backend: Backend) -> NodePlan {
        let attrs = |i: usize| LeaseAttrs::new(&format!("node{}", i + 1), UNDERLAY[i], backend);
        let own = Lease {
            attrs: attrs(0),
            ..lease(0)
        };
        let remote = Lease {
            attrs: attrs(1),
            ..lease(1)
        };
        let underlay = UnderlayInfo {
            dev: lab::topology::UNDERLAY_DEV.to_string(),
            ip: UNDERLAY[0],
            mtu: 1500,
        };
        routes::compile(&own, &[remote], backend, &underlay)
    }

    #[tokio::test]
    async fn a_trace_across_nodes_names_the_route_the_compiler_produces() {
        for backend in [Backend::HostGw, Backend::Vxlan] {
            let s = cluster(backend).await;
            let report = trace(&s, "default/p1", "default/p2", Some(80), "TCP")
                .await
                .unwrap();
            assert_eq!(report.hops.len(), 1, "{backend}: {report:?}");
            let hop = &report.hops[0];
            let plan = compiled_for_node1(backend);
            let want = plan.routes.iter().find(|r| r.dst == lease(1).cidr).unwrap();
            let got = hop.node_route.as_ref().unwrap();
            assert_eq!(got.node, "node1");
            assert_eq!(&got.route, want, "{backend}");
            assert!(
                hop.route.contains(&route_text(want)),
                "{backend}: {}",
                hop.route
            );
            match backend {
                Backend::HostGw => {
                    assert_eq!(route_text(want), "10.244.1.0/24 via 172.20.0.12 dev eth0");
                }
                Backend::Vxlan => {
                    assert_eq!(
                        route_text(want),
                        "10.244.1.0/24 via 10.244.1.0 dev flatnet.1 onlink"
                    );
                    assert!(hop.route.contains("VXLAN to 172.20.0.12"), "{}", hop.route);
                }
            }
            let v = serde_json::to_value(&report).unwrap();
            assert_eq!(v["hops"][0]["nodeRoute"]["dev"], json!(want.dev));
            assert_eq!(v["hops"][0]["nodeRoute"]["onlink"], json!(want.onlink));
        }
    }

    #[tokio::test]
    async fn a_trace_within_a_node_is_the_pods_veth_and_no_plan_route() {
        let s = cluster(Backend::HostGw).await;
        let report = trace(&s, "default/p1", "10.244.0.5", Some(80), "TCP")
            .await
            .unwrap();
        let hop = &report.hops[0];
        assert_eq!(hop.node_route, None);
        assert_eq!(
            hop.route,
            "delivered on node1 through the pod's veth (/32 route)"
        );
    }

    #[test]
    fn the_longest_prefix_wins_and_the_service_cidr_has_its_route() {
        let mut plan = compiled_for_node1(Backend::HostGw);
        let underlay = UnderlayInfo {
            dev: "eth0".into(),
            ip: UNDERLAY[0],
            mtu: 1500,
        };
        plan.routes.insert(routes::plan::service_route(
            "10.96.0.0/16".parse().unwrap(),
            &underlay,
        ));
        plan.routes.insert(Route {
            dst: "10.244.0.0/16".parse().unwrap(),
            via: UNDERLAY[1],
            dev: "eth0".into(),
            onlink: false,
        });
        let hit = |ip: &str| longest_match(&plan, ip.parse().unwrap()).map(|r| r.dst.to_string());
        assert_eq!(hit("10.244.1.9").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(hit("10.244.7.9").as_deref(), Some("10.244.0.0/16"));
        assert_eq!(hit("10.96.0.10").as_deref(), Some("10.96.0.0/16"));
        assert_eq!(hit("8.8.8.8"), None);
        assert_eq!(
            route_text(longest_match(&plan, "10.96.0.10".parse().unwrap()).unwrap()),
            "10.96.0.0/16 dev eth0"
        );
    }
}
