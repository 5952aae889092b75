//! Pod, Deployment and the parts of a pod spec flatnet reads.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::meta::{Condition, IntOrString, LabelSelector, ObjectMeta};

/// A `v1` Pod.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Pod {
    /// `metadata`; labels are what Services and NetworkPolicies select the pod by.
    pub metadata: ObjectMeta,
    /// `spec`: containers, node binding and DNS names.
    pub spec: PodSpec,
    /// `status`, written by the kubelet role; create drops any `status` a manifest carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The parts of `spec` of a Pod (or a pod template) that flatnet uses.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    /// `spec.nodeName`: the node the pod runs on; the lab's scheduler sets it on create when
    /// absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `spec.containers`: at least one; names are unique DNS labels.
    pub containers: Vec<Container>,
    /// `spec.hostNetwork`: `true` puts the pod in the node's network namespace; flatnet's DNS
    /// publishes no pod record for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// `spec.hostname`: a DNS label; with `subdomain` it gives the pod a DNS record under a
    /// headless Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `spec.subdomain`: the headless Service (same namespace) whose DNS zone gets `hostname`'s
    /// record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Seconds between SIGTERM (after the preStop hooks) and SIGKILL on a graceful delete;
    /// see [`PodSpec::termination_grace_period`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Fields flatnet does not model (`restartPolicy`, `volumes`, ...), kept so a round trip is
    /// lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PodSpec {
    /// The API server's default grace period for a pod.
    pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

    /// `terminationGracePeriodSeconds` with the API server's default (30) applied.
    pub fn termination_grace_period(&self) -> i64 {
        self.termination_grace_period_seconds
            .unwrap_or(Self::DEFAULT_GRACE_PERIOD_SECONDS)
    }
}

/// One container. In the lab, `command` + `args` run from the host filesystem; without a
/// command the container serves its `ports` with the built-in responder.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    /// `name`: unique among the pod's containers, a DNS label.
    pub name: String,
    /// `image`: kept but not pulled; the lab runs `command` from the host filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `command`: the program and its first arguments (the image's entrypoint in Kubernetes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `args`: arguments appended after `command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `ports`: declared ports, which named `targetPort`s and probe ports resolve against.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// `readinessProbe`: gates the pod's `Ready` condition and so its endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// `lifecycle`: hooks; flatnet runs `preStop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Fields flatnet does not model (`env`, `resources`, other probes, ...), kept so a round trip
    /// is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `lifecycle` of a container; flatnet runs `preStop` on a graceful delete.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    /// `preStop`: runs when the pod is deleted, before SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
    /// Fields flatnet does not model (`postStart`), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A lifecycle hook; exactly one of `exec`, `http_get`, `tcp_socket`, `sleep` is set in a
/// valid object (`tcpSocket` is accepted and ignored, as the kubelet does).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LifecycleHandler {
    /// `exec`: run a command in the pod's network namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// `httpGet`: send a GET to the pod's IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// `sleep`: wait a fixed time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepAction>,
    /// Fields flatnet does not model (`tcpSocket`), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `sleep`: the hook waits this long.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SleepAction {
    /// `seconds`: at least 0.
    pub seconds: i64,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A declared container port.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    /// `name`: an IANA service name, unique in the pod; what a named `targetPort` refers to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `containerPort`: the port the container listens on, 1-65535.
    pub container_port: u16,
    /// `TCP` (the default when absent), `UDP` or `SCTP`; see [`ContainerPort::protocol`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Fields flatnet does not model (`hostPort`, `hostIP`), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ContainerPort {
    /// The protocol with the API server's default applied.
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

/// A probe; exactly one of `tcp_socket`, `exec`, `http_get` is set in a valid object.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Probe {
    /// `tcpSocket`: ready when a connection to the port succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// `exec`: ready when the command exits 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// `httpGet`: ready on a 2xx or 3xx answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// `periodSeconds`: how often to probe; the lab probes every 2 s when absent (Kubernetes: 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
    /// `initialDelaySeconds`: validated, not used by the lab's prober.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
    /// `timeoutSeconds`: validated, not used by the lab's prober (fixed short timeouts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// `successThreshold`: validated, not used by the lab's prober.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// `failureThreshold`: validated, not used by the lab's prober.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Fields flatnet does not model (`grpc`, ...), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `tcpSocket`: ready when the port accepts a connection.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSocketAction {
    /// `port`: a number or a container port name.
    pub port: IntOrString,
    /// `host`: validated; the lab always connects to the pod's IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `exec`: ready when the command exits 0.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecAction {
    /// `command`: the program and its arguments, not run in a shell; must not be empty.
    pub command: Vec<String>,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `httpGet`: ready on a 2xx/3xx answer.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpGetAction {
    /// `path`: the request path, `/` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `port`: a number or a container port name.
    pub port: IntOrString,
    /// `host`: validated; the lab always connects to the pod's IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `scheme`: `HTTP` or `HTTPS`; the lab only speaks plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Fields flatnet does not model (`httpHeaders`), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Pod `status`, as the kubelet role fills it.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    /// `status.phase`: `Pending` (set on create), `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `status.podIP`: the pod's address, assigned by the CNI plugin's IPAM.
    #[serde(rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// `status.podIPs`: the pod's addresses, the first equal to `podIP`.
    #[serde(rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    /// `status.hostIP`: the underlay address of the pod's node.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// `status.conditions`: `Ready` among them, which decides whether endpoints serve the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Fields flatnet does not model (`containerStatuses`, `startTime`, ...), kept so a round trip
    /// is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `status.podIPs`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodIp {
    /// `ip`: one IP address of the pod.
    pub ip: String,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An `apps/v1` Deployment (the lab expands it into pods).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Deployment {
    /// `metadata`; the lab names the pods it creates after it.
    pub metadata: ObjectMeta,
    /// `spec`: replica count, selector and pod template.
    pub spec: DeploymentSpec,
    /// Fields flatnet does not model (`status`), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Deployment `spec`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentSpec {
    /// Desired pod count; the API server's default is 1 (see [`DeploymentSpec::replicas`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// `spec.selector`: required, not empty, and must match the template's labels.
    pub selector: LabelSelector,
    /// `spec.template`: what each replica is created from.
    pub template: PodTemplate,
    /// Fields flatnet does not model (`strategy`, ...), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DeploymentSpec {
    /// The replica count with the API server's default (1) applied.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }
}

/// A pod template (`spec.template` of a Deployment).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PodTemplate {
    /// `metadata`: the pods' labels (matched by the selector); name and namespace are unused.
    pub metadata: ObjectMeta,
    /// `spec`: each pod's spec, checked like a Pod's.
    pub spec: PodSpec,
    /// Fields flatnet does not model, kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
