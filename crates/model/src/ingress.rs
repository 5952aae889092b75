//! Ingress (`networking.k8s.io/v1`) and the IngressClass rules the gateway serves by.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cluster::Node;
use crate::meta::ObjectMeta;
use crate::service::{LoadBalancerStatus, Service};

/// The IngressClass the flatnet gateway implements.
pub const INGRESS_CLASS: &str = "flatnet";
/// The controller name an IngressClass for flatnet carries in `spec.controller`.
pub const INGRESS_CONTROLLER: &str = "flatnet.io/ingress-gateway";
/// The deprecated class annotation, still honoured when `spec.ingressClassName` is absent.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that makes an IngressClass the cluster's default: Ingresses without a class
/// belong to it.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The Secret type holding a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// A `networking.k8s.io/v1` IngressClass (cluster-scoped): which controller implements a class.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressClass {
    /// `metadata`; the name is what `spec.ingressClassName` of an Ingress refers to.
    pub metadata: ObjectMeta,
    /// `spec`: the controller implementing the class.
    pub spec: IngressClassSpec,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// IngressClass `spec`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressClassSpec {
    /// The controller that implements the class, e.g. [`INGRESS_CONTROLLER`].
    pub controller: String,
    /// `spec.parameters`: a reference to controller-specific configuration; kept, unused by
    /// flatnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl IngressClass {
    /// Whether the class carries `ingressclass.kubernetes.io/is-default-class: "true"`.
    pub fn is_default(&self) -> bool {
        self.metadata
            .annotations
            .get(DEFAULT_CLASS_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    /// Whether the controller of a class also serves Ingresses without a class: as the stored
    /// IngressClass of that name says (its default annotation), else as configured.
    pub fn serves_classless(stored: Option<&IngressClass>, configured: bool) -> bool {
        stored.map_or(configured, IngressClass::is_default)
    }
}

/// A `networking.k8s.io/v1` Ingress.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Ingress {
    /// `metadata`; the legacy class annotation [`LEGACY_CLASS_ANNOTATION`] lives here.
    pub metadata: ObjectMeta,
    /// `spec`: class, TLS and routing rules.
    pub spec: IngressSpec,
    /// `status`: the addresses the gateway publishes (see [`published_addresses`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<IngressStatus>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Ingress `spec`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressSpec {
    /// `spec.ingressClassName`: the IngressClass (a DNS subdomain); absent falls back to the legacy
    /// annotation, then the default class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// `spec.defaultBackend`: serves requests no rule matches; `defaultBackend` or `rules` is
    /// required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<IngressBackend>,
    /// `spec.tls`: certificates for HTTPS, by host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    /// `spec.rules`: host and path routing; `defaultBackend` or `rules` is required.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `spec.tls` entry: the hosts a Secret's certificate is for.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressTls {
    /// `hosts`: names the certificate serves, `*.` wildcards allowed; empty makes it the default
    /// certificate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `secretName`: a `kubernetes.io/tls` Secret in the Ingress's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `spec.rules` entry. No host: the rule applies to every host.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressRule {
    /// `host`: a DNS name, optionally with a leading `*.` wildcard for one label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `http`: the paths of this host; a rule without it routes nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `spec.rules[].http`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpIngressRuleValue {
    /// `paths`: at least one; the longest matching path wins.
    pub paths: Vec<HttpIngressPath>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One path of a rule.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpIngressPath {
    /// `path`: an absolute path, required for `Exact` and `Prefix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Exact`, `Prefix` or `ImplementationSpecific` (required by validation).
    pub path_type: String,
    /// `backend`: where matching requests go.
    pub backend: IngressBackend,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A backend: a Service and one of its ports.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressBackend {
    /// `service`: the backend Service; the only backend kind flatnet serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<IngressServiceBackend>,
    /// Fields flatnet does not model (`resource` backends), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `backend.service`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressServiceBackend {
    /// `name`: a Service in the Ingress's namespace.
    pub name: String,
    /// `port`: which of its ports.
    pub port: ServiceBackendPort,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `backend.service.port`: a Service port's number or its name (exactly one).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceBackendPort {
    /// `number`: the Service port's `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u16>,
    /// `name`: the Service port's `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Ingress `status`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressStatus {
    /// `status.loadBalancer`: the addresses clients reach the Ingress at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Ingress {
    /// `namespace/name` (namespace `default` when absent).
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.metadata.name)
    }

    /// The namespace, `default` when absent.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The class this Ingress asks for: `spec.ingressClassName`, else the legacy
    /// `kubernetes.io/ingress.class` annotation, else none.
    pub fn class(&self) -> Option<&str> {
        self.spec.ingress_class_name.as_deref().or_else(|| {
            self.metadata
                .annotations
                .get(LEGACY_CLASS_ANNOTATION)
                .map(String::as_str)
        })
    }

    /// Whether a controller of class `class` serves this Ingress. An Ingress without a class
    /// belongs to the cluster's default class, which `serve_classless` says we are.
    pub fn served_by(&self, class: &str, serve_classless: bool) -> bool {
        match self.class() {
            Some(c) => c == class,
            None => serve_classless,
        }
    }

    /// The `status.loadBalancer.ingress[].ip` values, in order.
    pub fn status_ips(&self) -> Vec<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .map(|lb| lb.ingress.iter().filter_map(|i| i.ip.as_deref()).collect())
            .unwrap_or_default()
    }
}

/// The addresses an Ingress of the gateway shows in `status.loadBalancer`: the LoadBalancer IPs
/// of the gateway's own Service (`publish`), else every node's InternalIP; sorted (IPs compare
/// numerically), no duplicates. The gateway writes them; `wait --converged` waits for them.
pub fn published_addresses(publish: Option<&Service>, nodes: &[&Node]) -> Vec<String> {
    let lb: std::collections::BTreeSet<std::net::IpAddr> = publish
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .map(|lb| {
            lb.ingress
                .iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ips = if lb.is_empty() {
        nodes
            .iter()
            .filter_map(|n| n.status.address("InternalIP")?.parse().ok())
            .collect()
    } else {
        lb
    };
    ips.into_iter().map(|ip| ip.to_string()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    fn ing(v: Value) -> Ingress {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn class_prefers_the_spec_field_over_the_legacy_annotation() {
        let both = ing(json!({
            "metadata": {"name": "a", "annotations": {"kubernetes.io/ingress.class": "nginx"}},
            "spec": {"ingressClassName": "flatnet"}
        }));
        assert_eq!(both.class(), Some("flatnet"));
        assert!(both.served_by("flatnet", false));
        let legacy = ing(json!({
            "metadata": {"name": "a", "annotations": {"kubernetes.io/ingress.class": "flatnet"}},
        }));
        assert_eq!(legacy.class(), Some("flatnet"));
        let other = ing(json!({"metadata": {"name": "a"}, "spec": {"ingressClassName": "x"}}));
        assert!(!other.served_by("flatnet", true));
        let none = ing(json!({"metadata": {"name": "a"}}));
        assert!(none.served_by("flatnet", true));
        assert!(!none.served_by("flatnet", false));
    }

    #[test]
    fn round_trip_keeps_unknown_fields_and_reads_backends() {
        let v = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "rules": [{"host": "a.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}],
                "tls": [{"hosts": ["a.test"], "secretName": "a-tls"}],
                "futureField": 1
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}
        });
        let i = ing(v.clone());
        assert_eq!(i.key(), "shop/web");
        let svc = i.spec.rules[0].http.as_ref().unwrap().paths[0]
            .backend
            .service
            .as_ref()
            .unwrap();
        assert_eq!(svc.port.name.as_deref(), Some("http"));
        assert_eq!(i.status_ips(), vec!["172.20.0.240"]);
        assert_eq!(serde_json::to_value(&i).unwrap(), v);
    }
}
