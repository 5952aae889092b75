//! What the compiler reads: pods, namespaces, flows, and policies checked into the form the
//! compiler works on (every field the API server validates is checked again here, so a
//! policy that did not come through `apply` gets a clear error instead of a wrong answer).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::IpNet;
pub use model::Protocol;
use model::{
    IntOrString, LabelSelector, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod,
};
use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::ipblock::IpBlockSet;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// `ports[].name` of the container port (an IANA_SVC_NAME).
    pub name: String,
    /// `ports[].protocol`.
    pub protocol: Protocol,
    /// `ports[].containerPort`.
    pub port: u16,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`, what pod selectors match.
    pub labels: BTreeMap<String, String>,
    /// `status.podIP` (IPv4); a pod without one is still selected and evaluated by identity.
    pub ip: Option<Ipv4Addr>,
    /// Named container ports (unnamed ones play no part in policy).
    pub ports: Vec<NamedPort>,
    /// `spec.nodeName`: the node that enforces this pod's policy; `None` while unscheduled.
    pub node: Option<String>,
    /// A `hostNetwork` pod is not a policy subject (see the module docs).
    #[serde(default)]
    pub host_network: bool,
}

impl PodInfo {
    /// A pod with just a namespace, a name and labels (tests, tools).
    pub fn new(namespace: &str, name: &str, labels: BTreeMap<String, String>) -> PodInfo {
        PodInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels,
            ..PodInfo::default()
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port named `name` for `protocol`, if the pod declares one.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// Reads a `v1` Pod: labels, the IPv4 pod address (`status.podIP`, else the first IPv4
    /// of `status.podIPs`), named container ports, node and `hostNetwork`.
    pub fn from_pod(pod: &Pod) -> Result<PodInfo, PolicyError> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let key = format!("{namespace}/{}", pod.metadata.name);
        let bad = |field: &str, value: &str, reason: &str| PolicyError::InvalidPod {
            pod: key.clone(),
            field: field.to_string(),
            value: format!("{value:?}"),
            reason: reason.to_string(),
        };
        let mut ip = None;
        if let Some(status) = &pod.status {
            let candidates = status
                .pod_ip
                .iter()
                .map(|s| ("status.podIP", s.as_str()))
                .chain(
                    status
                        .pod_ips
                        .iter()
                        .map(|p| ("status.podIPs", p.ip.as_str())),
                );
            for (field, s) in candidates {
                match s.parse::<IpAddr>() {
                    Ok(IpAddr::V4(v4)) => {
                        ip = Some(v4);
                        break;
                    }
                    Ok(IpAddr::V6(_)) => {}
                    Err(_) => return Err(bad(field, s, "must be an IP address")),
                }
            }
        }
        let mut ports = Vec::new();
        for (ci, c) in pod.spec.containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().enumerate() {
                let Some(name) = &p.name else { continue };
                let protocol = p.protocol().parse::<Protocol>().map_err(|_| {
                    bad(
                        &format!("spec.containers[{ci}].ports[{pi}].protocol"),
                        p.protocol(),
                        "supported values: \"TCP\", \"UDP\", \"SCTP\"",
                    )
                })?;
                ports.push(NamedPort {
                    name: name.clone(),
                    protocol,
                    port: p.container_port,
                });
            }
        }
        Ok(PodInfo {
            namespace,
            name: pod.metadata.name.clone(),
            labels: pod.metadata.labels.clone(),
            ip,
            ports,
            node: pod.spec.node_name.clone(),
            host_network: pod.spec.host_network == Some(true),
        })
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    /// `metadata.name`.
    pub name: String,
    /// `kubernetes.io/metadata.name` is added by the compiler when missing, as the API server
    /// does.
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// A namespace named `name` with these labels.
    pub fn new(name: &str, labels: BTreeMap<String, String>) -> NamespaceInfo {
        NamespaceInfo {
            name: name.to_string(),
            labels,
        }
    }

    /// Reads a `v1` Namespace: its name and labels.
    pub fn from_namespace(ns: &Namespace) -> NamespaceInfo {
        NamespaceInfo::new(&ns.metadata.name, ns.metadata.labels.clone())
    }
}

/// A pod by namespace and name; displays and parses as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

impl PodRef {
    /// `namespace/name` as a reference.
    pub fn new(namespace: &str, name: &str) -> PodRef {
        PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl FromStr for PodRef {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<PodRef, PolicyError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef::new(ns, name))
            }
            _ => Err(PolicyError::BadPodRef(s.to_string())),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One end of a flow: a pod, or an address (which may be a pod's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoint {
    /// A pod by name (a hostNetwork pod counts as its node address).
    Pod(PodRef),
    /// An address: the pod that has it, if any; otherwise an end that is not a policy subject.
    Ip(Ipv4Addr),
}

/// A connection attempt: the evaluator answers for its initiating direction (replies of an
/// allowed connection are allowed by the dataplane's conntrack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The end that initiates the connection.
    pub src: Endpoint,
    /// The end it connects to.
    pub dst: Endpoint,
    /// Destination port.
    pub port: u16,
    /// IP protocol.
    pub protocol: Protocol,
}

/// A policy in checked form.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub selector: LabelSelector,
    /// `Some` iff the policy isolates the pods it selects for ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Rule {
    /// `None`: every peer (`from`/`to` missing or empty).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port (`ports` missing or empty).
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Peer {
    Pods {
        namespaces: NsSelect,
        /// The empty selector (every pod) when only `namespaceSelector` is given.
        pods: LabelSelector,
    },
    Block(IpBlockSet),
}

#[derive(Clone, Debug)]
pub(crate) enum NsSelect {
    /// No `namespaceSelector`: the policy's own namespace.
    Own,
    Matching(LabelSelector),
}

#[derive(Clone, Debug)]
pub(crate) struct PortSpec {
    pub protocol: Protocol,
    pub port: PortValue,
}

#[derive(Clone, Debug)]
pub(crate) enum PortValue {
    /// No `port`: every port of the protocol.
    All,
    Range(u16, u16),
    Named(String),
}

/// Checks a policy the way the API server would and brings it into [`Policy`] form.
pub(crate) fn check_policy(p: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let key = format!("{namespace}/{}", p.metadata.name);
    let c = Checker { key: &key };
    c.selector(&p.spec.pod_selector, "spec.podSelector")?;
    if let Some(types) = &p.spec.policy_types {
        for (i, t) in types.iter().enumerate() {
            if t != "Ingress" && t != "Egress" {
                return Err(c.err(
                    &format!("spec.policyTypes[{i}]"),
                    t,
                    "supported values: \"Ingress\", \"Egress\"",
                ));
            }
        }
    }
    let (has_ingress, has_egress) = p.spec.policy_types();
    let ingress = p.spec.ingress.as_ref().map(|rules| {
        rules
            .iter()
            .map(|r| (r.from.as_deref(), r.ports.as_deref()))
            .collect()
    });
    let egress = p.spec.egress.as_ref().map(|rules| {
        rules
            .iter()
            .map(|r| (r.to.as_deref(), r.ports.as_deref()))
            .collect()
    });
    let ingress = c.rules(has_ingress, ingress, "spec.ingress", "from")?;
    let egress = c.rules(has_egress, egress, "spec.egress", "to")?;
    Ok(Policy {
        key: key.clone(),
        namespace,
        selector: p.spec.pod_selector.clone(),
        ingress,
        egress,
    })
}

/// A rule's `from`/`to` and `ports`, whichever direction it is.
type RuleFields<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

struct Checker<'a> {
    key: &'a str,
}

impl Checker<'_> {
    fn err(&self, field: &str, value: &str, reason: &str) -> PolicyError {
        PolicyError::InvalidPolicy {
            policy: self.key.to_string(),
            field: field.to_string(),
            value: format!("{value:?}"),
            reason: reason.to_string(),
        }
    }

    fn selector(&self, s: &LabelSelector, path: &str) -> Result<(), PolicyError> {
        for (i, r) in s.match_expressions.iter().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    return Err(self.err(
                        &format!("{p}.values"),
                        "[]",
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
                "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                    return Err(self.err(
                        &format!("{p}.values"),
                        &r.values.join(","),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(self.err(
                        &format!("{p}.operator"),
                        other,
                        "supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rules of one direction: `None` when the policy does not have that type; a
    /// missing list with the type is an empty one (deny).
    fn rules(
        &self,
        has_type: bool,
        rules: Option<Vec<RuleFields<'_>>>,
        path: &str,
        peers_field: &str,
    ) -> Result<Option<Vec<Rule>>, PolicyError> {
        if !has_type {
            return Ok(None);
        }
        rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, (peers, ports))| {
                self.rule(peers, ports, &format!("{path}[{i}]"), peers_field)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn rule(
        &self,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        path: &str,
        peers_field: &str,
    ) -> Result<Rule, PolicyError> {
        let peers = match peers {
            None | Some([]) => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, peer)| self.peer(peer, &format!("{path}.{peers_field}[{j}]")))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let ports = match ports {
            None | Some([]) => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, port)| self.port(port, &format!("{path}.ports[{j}]")))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Rule { peers, ports })
    }

    fn peer(&self, peer: &NetworkPolicyPeer, path: &str) -> Result<Peer, PolicyError> {
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, selectors) {
            (Some(_), true) => Err(self.err(
                path,
                "ipBlock",
                "may not specify both ipBlock and another peer",
            )),
            (None, false) => Err(self.err(path, "{}", "must specify a peer")),
            (Some(block), false) => {
                let bp = format!("{path}.ipBlock");
                let cidr = parse_cidr(&block.cidr)
                    .ok_or_else(|| self.err(&format!("{bp}.cidr"), &block.cidr, CIDR_REASON))?;
                let mut except = Vec::new();
                for (k, x) in block.except.iter().enumerate() {
                    let xp = format!("{bp}.except[{k}]");
                    let ex = parse_cidr(x).ok_or_else(|| self.err(&xp, x, CIDR_REASON))?;
                    let inside =
                        ex.prefix_len() > cidr.prefix_len() && cidr.trunc().contains(&ex.network());
                    if !inside {
                        return Err(self.err(&xp, x, "must be a strict subset of `cidr`"));
                    }
                    except.push(ex);
                }
                Ok(Peer::Block(IpBlockSet::cidr_except(cidr, &except)))
            }
            (None, true) => {
                if let Some(s) = &peer.pod_selector {
                    self.selector(s, &format!("{path}.podSelector"))?;
                }
                if let Some(s) = &peer.namespace_selector {
                    self.selector(s, &format!("{path}.namespaceSelector"))?;
                }
                Ok(Peer::Pods {
                    namespaces: match &peer.namespace_selector {
                        None => NsSelect::Own,
                        Some(s) => NsSelect::Matching(s.clone()),
                    },
                    pods: peer.pod_selector.clone().unwrap_or_default(),
                })
            }
        }
    }

    fn port(&self, p: &NetworkPolicyPort, path: &str) -> Result<PortSpec, PolicyError> {
        let protocol = p.protocol().parse::<Protocol>().map_err(|_| {
            self.err(
                &format!("{path}.protocol"),
                p.protocol(),
                "supported values: \"TCP\", \"UDP\", \"SCTP\"",
            )
        })?;
        let number = |n: i64, field: &str| {
            u16::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                self.err(
                    &format!("{path}.{field}"),
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                )
            })
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortValue::All,
            (None, Some(end)) => {
                return Err(self.err(
                    &format!("{path}.port"),
                    &end.to_string(),
                    "must be specified when `endPort` is set",
                ));
            }
            (Some(IntOrString::String(name)), None) => {
                if name.is_empty() {
                    return Err(self.err(&format!("{path}.port"), name, "must not be empty"));
                }
                PortValue::Named(name.clone())
            }
            (Some(IntOrString::String(name)), Some(_)) => {
                return Err(self.err(
                    &format!("{path}.endPort"),
                    name,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            (Some(IntOrString::Int(start)), end) => {
                let start = number(i64::from(*start), "port")?;
                let end = match end {
                    None => start,
                    Some(end) => number(i64::from(end), "endPort")?,
                };
                if end < start {
                    return Err(self.err(
                        &format!("{path}.endPort"),
                        &end.to_string(),
                        "must be greater than or equal to `port`",
                    ));
                }
                PortValue::Range(start, end)
            }
        };
        Ok(PortSpec { protocol, port })
    }
}

const CIDR_REASON: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok()
}
