//! Unit and property tests of the policy compiler and evaluator. The upstream e2e cases are
//! in `crates/plan/tests/netpol_conformance.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use model::NetworkPolicy;
use serde_json::Value;

use super::*;

mod props;
mod semantics;

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The upstream model: namespaces x, y, z (labelled `ns: <name>`), pods a, b, c in each
/// (labelled `pod: <name>`), serving 80 and 81 on TCP, UDP and SCTP as `serve-<port>-<proto>`.
/// Pod addresses: 10.244.<1|2|3>.<10|11|12>.
pub(super) fn xyz() -> (Vec<NamespaceInfo>, Vec<PodInfo>) {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for (ni, ns) in ["x", "y", "z"].into_iter().enumerate() {
        namespaces.push(NamespaceInfo::new(ns, labels(&[("ns", ns)])));
        for (pi, name) in ["a", "b", "c"].into_iter().enumerate() {
            let mut p = PodInfo::new(ns, name, labels(&[("pod", name)]));
            p.ip = Some(Ipv4Addr::new(10, 244, ni as u8 + 1, 10 + pi as u8));
            for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                for port in [80, 81] {
                    p.ports.push(NamedPort {
                        name: format!("serve-{port}-{}", proto.as_str().to_lowercase()),
                        protocol: proto,
                        port,
                    });
                }
            }
            pods.push(p);
        }
    }
    (namespaces, pods)
}

/// A NetworkPolicy from `{"metadata": .., "spec": ..}` JSON.
pub(super) fn policy(v: Value) -> NetworkPolicy {
    serde_json::from_value(v).expect("a NetworkPolicy")
}

pub(super) fn compile(policies: Vec<Value>) -> CompiledPolicy {
    let (ns, pods) = xyz();
    Cluster::new(ns, pods, policies.into_iter().map(policy).collect())
        .expect("valid policies")
        .compile()
}

pub(super) fn pod_ref(s: &str) -> Endpoint {
    Endpoint::Pod(s.parse().expect("ns/name"))
}

pub(super) fn flow(src: Endpoint, dst: Endpoint, port: u16, protocol: Protocol) -> Flow {
    Flow {
        src,
        dst,
        port,
        protocol,
    }
}

/// Verdict of `src -> dst` (both `ns/pod`) on TCP `port`.
pub(super) fn tcp(cp: &CompiledPolicy, src: &str, dst: &str, port: u16) -> Verdict {
    cp.verdict(&flow(pod_ref(src), pod_ref(dst), port, Protocol::Tcp))
        .expect("known pods")
}

pub(super) fn all_refs() -> Vec<PodRef> {
    let (_, pods) = xyz();
    pods.iter()
        .map(|p| PodRef::new(&p.namespace, &p.name))
        .collect()
}
