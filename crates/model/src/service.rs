//! Service and EndpointSlice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::meta::{Condition, IntOrString, ObjectMeta};

/// A `v1` Service.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Service {
    /// `metadata`; the name is a DNS-1035 label (it becomes a DNS name).
    pub metadata: ObjectMeta,
    /// `spec`: type, addresses, ports and selector.
    pub spec: ServiceSpec,
    /// `status`: the LoadBalancer address, once one is assigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Service `spec`. Absent fields take the API server's defaults through the accessor methods.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// An IP, `"None"` for a headless Service, or absent/empty to have one allocated.
    #[serde(rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// `spec.clusterIPs`: the cluster IPs (one IPv4 in flatnet); the first must equal `clusterIP`.
    #[serde(rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    /// `spec.ports`: required unless the Service is headless or `ExternalName`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Without a selector the Service has no managed endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.sessionAffinity`: `None` (default) or `ClientIP` (a client sticks to one endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// `spec.externalTrafficPolicy`: `Cluster` (default) or `Local` (node ports and LB addresses
    /// use local endpoints only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// `spec.internalTrafficPolicy`: `Cluster` (default) or `Local` (cluster IP traffic stays on
    /// the client's node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// `spec.externalIPs`: extra addresses the Service answers on, as a cluster IP does.
    #[serde(rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    /// `spec.loadBalancerIP`: a requested address from the LoadBalancer pool (deprecated upstream,
    /// honoured here).
    #[serde(rename = "loadBalancerIP", skip_serializing_if = "Option::is_none")]
    pub load_balancer_ip: Option<String>,
    /// `spec.externalName`: the DNS name an `ExternalName` Service is a CNAME for; required for
    /// that type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// `spec.publishNotReadyAddresses`: `true` marks every selected pod ready and serving in the
    /// EndpointSlices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_not_ready_addresses: Option<bool>,
    /// Set (and kept) by the API server for `LoadBalancer` services with
    /// `externalTrafficPolicy: Local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    /// Defaulted by the API server when `sessionAffinity` is `ClientIP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// `false`: a `LoadBalancer` service gets no nodePorts unless its ports ask for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocate_load_balancer_node_ports: Option<bool>,
    /// `spec.ipFamilies`: `IPv4` and/or `IPv6`; defaulted to `[IPv4]`, and the lab refuses anything
    /// else.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<String>,
    /// `spec.ipFamilyPolicy`: `SingleStack` (default), `PreferDualStack` or `RequireDualStack`
    /// (refused by the IPv4-only lab).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `spec.sessionAffinityConfig`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionAffinityConfig {
    /// `clientIP`: the timeout of `ClientIP` affinity.
    #[serde(rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientIpConfig {
    /// 1..=86400; the API server's default is 10800 (3 h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The session affinity timeout the API server defaults to (3 h).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;

impl Service {
    /// `namespace/name` (namespace `default` when absent).
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }

    /// The first `status.loadBalancer.ingress[].ip`, if any.
    pub fn load_balancer_ip(&self) -> Option<&str> {
        self.status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .iter()
            .find_map(|i| i.ip.as_deref())
    }
}

impl ServiceSpec {
    /// The type with the default (`ClusterIP`) applied.
    pub fn type_(&self) -> &str {
        self.type_.as_deref().unwrap_or("ClusterIP")
    }

    /// Whether `clusterIP` is `None`.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some("None")
    }

    /// `sessionAffinity` with the default (`None`) applied.
    pub fn session_affinity(&self) -> &str {
        self.session_affinity.as_deref().unwrap_or("None")
    }

    /// `externalTrafficPolicy` with the default (`Cluster`) applied.
    pub fn external_traffic_policy(&self) -> &str {
        self.external_traffic_policy.as_deref().unwrap_or("Cluster")
    }

    /// `internalTrafficPolicy` with the default (`Cluster`) applied.
    pub fn internal_traffic_policy(&self) -> &str {
        self.internal_traffic_policy.as_deref().unwrap_or("Cluster")
    }

    /// The selector the endpoints controller uses: `None` when absent or empty. (An empty
    /// map does not survive the API server's storage, so it never selects every pod.)
    pub fn endpoint_selector(&self) -> Option<&BTreeMap<String, String>> {
        self.selector.as_ref().filter(|s| !s.is_empty())
    }

    /// Whether the service's ports get nodePorts allocated: `NodePort`, and `LoadBalancer`
    /// unless `allocateLoadBalancerNodePorts` is false.
    pub fn allocates_node_ports(&self) -> bool {
        match self.type_() {
            "NodePort" => true,
            "LoadBalancer" => self.allocate_load_balancer_node_ports != Some(false),
            _ => false,
        }
    }

    /// Whether the service needs a `healthCheckNodePort` (`LoadBalancer` with
    /// `externalTrafficPolicy: Local`).
    pub fn needs_health_check_node_port(&self) -> bool {
        self.type_() == "LoadBalancer" && self.external_traffic_policy() == "Local"
    }
}

/// One Service port.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    /// `name`: an IANA service name; required when the Service has more than one port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `protocol`: `TCP` (default), `UDP` or `SCTP`; see [`ServicePort::protocol`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `port`: the port the Service listens on (cluster IP, external IPs, LB address), 1-65535.
    pub port: u16,
    /// `targetPort`: the pods' port, a number or a container port name; defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `nodePort`: 30000-32767, allocated for `NodePort` and `LoadBalancer` types when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// `appProtocol`: the application protocol (`http`, `kubernetes.io/h2c`, ...); copied to the
    /// EndpointSlice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ServicePort {
    /// The protocol with the default (`TCP`) applied.
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }

    /// `targetPort` with the default (the same number as `port`) applied.
    pub fn target_port(&self) -> IntOrString {
        self.target_port
            .clone()
            .unwrap_or(IntOrString::Int(i32::from(self.port)))
    }
}

/// Service `status`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceStatus {
    /// `status.loadBalancer`: the address(es) a `LoadBalancer` Service got from the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
    /// `status.conditions`: kept as written; flatnet sets none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `status.loadBalancer`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerStatus {
    /// `ingress`: one entry per address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `status.loadBalancer.ingress` entry.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerIngress {
    /// `ip`: the address; what flatnet's LoadBalancer allocation writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `hostname`: for load balancers known by DNS name; flatnet writes none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `VIP` (the default) or `Proxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<String>,
    /// Fields flatnet does not model (`ports`), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A `discovery.k8s.io/v1` EndpointSlice, written by the controller.
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// `metadata`; named `<service>-<5 chars>` and labelled `kubernetes.io/service-name`.
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// `endpoints`: the selected pods, at most 100 per slice.
    pub endpoints: Vec<Endpoint>,
    /// `ports`: the Service ports with their resolved target port numbers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One endpoint (a pod) of an EndpointSlice.
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `addresses`: the pod's IP (one entry).
    pub addresses: Vec<String>,
    /// `conditions`: readiness of the endpoint.
    pub conditions: EndpointConditions,
    /// `hostname`: the pod's `spec.hostname` when its `subdomain` is this Service (headless DNS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `nodeName`: the pod's node; what `Local` traffic policies filter on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `targetRef`: the Pod this endpoint is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
    /// The `topology.kubernetes.io/zone` label of the endpoint's node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Endpoint `conditions`; absent means unknown, which consumers treat as ready.
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// `ready`: the pod is Ready and not terminating (or the Service publishes not-ready
    /// addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// `serving`: the pod is Ready, terminating or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// `terminating`: the pod has a `deletionTimestamp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One EndpointSlice port (the resolved target port of a Service port).
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// `name`: the Service port's name (empty for an unnamed port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `protocol`: the Service port's protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `port`: the target port number on the pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `appProtocol`: copied from the Service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

crate::de::with_extra!(EndpointSlice {
    "metadata" => metadata,
    "addressType" => address_type,
    "endpoints" => endpoints,
    "ports" => ports,
});
crate::de::with_extra!(Endpoint {
    "addresses" => addresses,
    "conditions" => conditions,
    "hostname" => hostname,
    "nodeName" => node_name,
    "targetRef" => target_ref,
    "zone" => zone,
});
crate::de::with_extra!(EndpointConditions {
    "ready" => ready,
    "serving" => serving,
    "terminating" => terminating,
});
crate::de::with_extra!(ObjectReference {
    "kind" => kind,
    "namespace" => namespace,
    "name" => name,
    "uid" => uid,
});
crate::de::with_extra!(EndpointPort {
    "name" => name,
    "protocol" => protocol,
    "port" => port,
    "appProtocol" => app_protocol,
});

/// A reference to another object (`targetRef`).
#[derive(Serialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// `kind`: `Pod` for endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `namespace`: the object's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `name`: the object's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `uid`: the object's uid, telling a re-created object from the old one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Fields flatnet does not model (`resourceVersion`, ...), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
