//! `flatnet trace SRC DST`: where the first packet of a flow goes and why, computed from the
//! store with the same compilers the agents use (`services` for the service proxy of the
//! node the packet enters, `netpol` for NetworkPolicy), so what is explained is what the
//! dataplane was given.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::{EndpointSlice, Object, Service};
use serde::Serialize;
use serde_json::Value;
use services::{NodeView, Proto, Trace, TraceOutcome, compile};
use store::Store;

use crate::topology::LabError;

/// One side of the flow, as resolved from the command line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    /// What the user wrote.
    pub given: String,
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
    pub src: Party,
    pub dst: Party,
    pub port: u16,
    pub protocol: String,
    /// The node whose service proxy sees the packet first.
    pub entry_node: Option<String>,
    pub proxy: Option<Trace>,
    pub hops: Vec<Hop>,
}

/// The packet's way to one possible final destination.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    pub to: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub route: String,
    pub policy: Option<String>,
    pub allowed: Option<bool>,
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
) -> Result<Party, LabError> {
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
        return pod_party(p)
            .ok_or_else(|| LabError::Other(format!("pod {ns}/{name} has no IP yet")));
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
            .ok_or_else(|| {
                LabError::Other(format!(
                    "service {ns}/{name} has no clusterIP (headless or ExternalName)"
                ))
            })?;
        return Ok(party(ip, None, None));
    }
    Err(LabError::Other(format!(
        "{given}: not a pod, a service, a node or an IPv4 address"
    )))
}

/// Computes the report for a flow from `src` to `dst`.
pub async fn trace(
    store: &impl Store,
    src: &str,
    dst: &str,
    port: Option<u16>,
    protocol: &str,
) -> Result<Report, LabError> {
    let proto = protocol
        .parse::<Proto>()
        .map_err(|_| LabError::Other(format!("--protocol {protocol}: use TCP, UDP or SCTP")))?;
    let (svc_kvs, _) = store.list("objects/services/").await?;
    let (slice_kvs, _) = store.list("objects/endpointslices/").await?;
    let (pod_kvs, _) = store.list("objects/pods/").await?;
    let (leases, _) = store.list(store::keys::SUBNETS).await?;
    let config: Value = store
        .get(store::keys::CONFIG)
        .await?
        .and_then(|kv| kv.decode().ok())
        .ok_or_else(|| LabError::Other("no network config in the store".into()))?;
    let services: Vec<Service> = decode_all(&svc_kvs, "objects/services/");
    let slices: Vec<EndpointSlice> = decode_all(&slice_kvs, "objects/endpointslices/");
    let pods: Vec<Value> = decode_all(&pod_kvs, "objects/pods/");
    let mut nodes: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut node_cidrs: Vec<(Ipv4Net, String)> = Vec::new();
    for kv in &leases {
        let Ok(v) = kv.decode::<Value>() else {
            continue;
        };
        let (Some(n), Some(ip)) = (
            v["node"].as_str(),
            v["underlayIP"].as_str().and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        nodes.insert(n.to_string(), ip);
        if let Some(c) = store::keys::subnet_cidr(&kv.key).and_then(|c| c.parse().ok()) {
            node_cidrs.push((c, n.to_string()));
        }
    }
    let cidr = |k: &str| config[k].as_str().and_then(|s| s.parse::<Ipv4Net>().ok());
    let cluster_cidr =
        cidr("podCIDR").ok_or_else(|| LabError::Other("network config has no podCIDR".into()))?;
    let service_cidr = cidr("serviceCIDR");
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
        let (all, _) = store.list("objects/").await?;
        all.iter()
            .filter(|kv| {
                kv.key.starts_with("objects/namespaces/")
                    || kv.key.starts_with("objects/pods/")
                    || kv.key.starts_with("objects/networkpolicies/")
            })
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
        let route = match (&from, &to_node) {
            (Some(a), Some(b)) if a == b => {
                format!("delivered on {a} through the pod's veth (/32 route)")
            }
            (Some(a), Some(b)) => format!(
                "{a} -> {b} ({}) over the {} backend, then the pod's veth",
                nodes.get(b).map(ToString::to_string).unwrap_or_default(),
                config["backend"].as_str().unwrap_or("?")
            ),
            (None, Some(b)) => format!("to {b}, then the pod's veth"),
            _ => match node_cidrs.iter().find(|(c, _)| c.contains(&ip)) {
                Some((c, n)) => format!("to {n} (holds {c}) — no pod has {ip}"),
                None if cluster_cidr.contains(&ip) => {
                    format!("{ip} is in the pod CIDR but no node holds its subnet")
                }
                None => format!("{ip} is outside the cluster: routed out by the node"),
            },
        };
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
