//! The kinds flatnet stores, with their API groups, plurals and kubectl-style names.

use std::fmt;

/// A Kubernetes kind flatnet knows about.
///
/// Eight of them can be applied from manifests ([`Kind::APPLY`]); `Node` and `EndpointSlice`
/// are written by flatnet itself (lab and controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `networking.k8s.io/v1` Ingress.
    Ingress,
    /// `networking.k8s.io/v1` IngressClass (cluster-scoped).
    IngressClass,
    /// `v1` Secret.
    Secret,
    /// `apps/v1` Deployment.
    Deployment,
    /// `v1` Node (cluster-scoped), written by the lab's kubelet.
    Node,
    /// `discovery.k8s.io/v1` EndpointSlice, written by the endpoints controller.
    EndpointSlice,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
        Kind::Deployment,
        Kind::Node,
        Kind::EndpointSlice,
    ];

    /// The kinds `flatnet apply` accepts in manifests (design.md §3).
    pub const APPLY: [Kind; 8] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
        Kind::Deployment,
    ];

    /// The `kind` field value, e.g. `"Pod"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::Deployment => "Deployment",
            Kind::Node => "Node",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// The lowercase plural resource name, e.g. `"pods"`; used in store keys.
    pub fn plural(&self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Ingress => "ingresses",
            Kind::IngressClass => "ingressclasses",
            Kind::Secret => "secrets",
            Kind::Deployment => "deployments",
            Kind::Node => "nodes",
            Kind::EndpointSlice => "endpointslices",
        }
    }

    /// The only `apiVersion` accepted for this kind.
    pub fn api_version(&self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::Secret | Kind::Node => "v1",
            Kind::NetworkPolicy | Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
            Kind::Deployment => "apps/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(&self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::IngressClass)
    }

    /// Whether `flatnet apply` accepts this kind.
    pub fn appliable(&self) -> bool {
        Kind::APPLY.contains(self)
    }

    /// Parses a kind as kubectl does on the command line: the kind (any case), the singular,
    /// the plural, the short name, optionally followed by `.<group>` (`deployments.apps`).
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, group) = match lower.split_once('.') {
            Some((name, group)) => (name, Some(group)),
            None => (lower.as_str(), None),
        };
        let kind = match name {
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "pod" | "pods" | "po" => Kind::Pod,
            "service" | "services" | "svc" => Kind::Service,
            "networkpolicy" | "networkpolicies" | "netpol" => Kind::NetworkPolicy,
            "ingress" | "ingresses" | "ing" => Kind::Ingress,
            "ingressclass" | "ingressclasses" => Kind::IngressClass,
            "secret" | "secrets" => Kind::Secret,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "node" | "nodes" | "no" => Kind::Node,
            "endpointslice" | "endpointslices" => Kind::EndpointSlice,
            _ => return None,
        };
        match group {
            None => Some(kind),
            Some(g) if kind.api_version().split_once('/').map(|(g, _)| g) == Some(g) => Some(kind),
            Some(_) => None,
        }
    }

    /// The kind whose `kind` field is exactly `s` (manifests are case-sensitive).
    pub fn from_kind_field(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_kubectl_names() {
        let cases = [
            ("pod", Kind::Pod),
            ("pods", Kind::Pod),
            ("po", Kind::Pod),
            ("Pod", Kind::Pod),
            ("svc", Kind::Service),
            ("services", Kind::Service),
            ("deploy", Kind::Deployment),
            ("deployments", Kind::Deployment),
            ("deployments.apps", Kind::Deployment),
            ("netpol", Kind::NetworkPolicy),
            ("networkpolicies", Kind::NetworkPolicy),
            ("networkpolicies.networking.k8s.io", Kind::NetworkPolicy),
            ("ns", Kind::Namespace),
            ("namespaces", Kind::Namespace),
            ("ing", Kind::Ingress),
            ("ingresses", Kind::Ingress),
            ("ingressclass", Kind::IngressClass),
            ("ingressclasses.networking.k8s.io", Kind::IngressClass),
            ("secret", Kind::Secret),
            ("secrets", Kind::Secret),
            ("node", Kind::Node),
            ("nodes", Kind::Node),
            ("no", Kind::Node),
            ("endpointslices", Kind::EndpointSlice),
            ("EndpointSlice", Kind::EndpointSlice),
        ];
        for (s, want) in cases {
            assert_eq!(Kind::parse(s), Some(want), "{s}");
        }
    }

    #[test]
    fn parse_rejects_unknown_names_and_wrong_groups() {
        for s in [
            "",
            "pods.apps",
            "configmap",
            "deployments.networking.k8s.io",
            "p",
        ] {
            assert_eq!(Kind::parse(s), None, "{s}");
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(Kind::parse(k.plural()), Some(k));
            assert_eq!(Kind::from_kind_field(k.as_str()), Some(k));
        }
        assert_eq!(Kind::from_kind_field("pod"), None);
    }
}
