//! Kubernetes objects as flatnet uses them: kinds, typed views, manifest parsing with the API
//! server's validation rules, and Kubernetes-shaped output (`List`, YAML).
//!
//! Objects travel as [`Object`] (a [`Kind`] and the full JSON) so that nothing a user wrote is
//! lost; typed views ([`Pod`], [`Service`], ...) keep fields they do not model in `extra`, so
//! a round trip through them is lossless too. We do not use k8s-openapi (build time).
//!
//! # Layout
//! - `kind` — [`Kind`]: names, plurals, API versions, scope, kubectl-style parsing.
//! - `object` — [`Object`], store keys, [`list_json`], [`to_yaml`].
//! - `manifest` — [`parse_manifests`]: YAML/JSON documents, `List` expansion, create defaults.
//! - `validate` — [`validate`]: per-kind field checks with exact paths and values.
//! - `names` — DNS label/subdomain, label key/value, IANA port name syntax.
//! - `time` — RFC 3339 timestamps as the API server writes them, and the calendar behind them.
//! - `meta`, `pod`, `service`, `cluster`, `secret`, `policy`, `ingress` — typed views.
//!
//! This crate must not do IO (files, network, clock, environment): callers pass text in and
//! get values out.

mod cluster;
mod de;
mod error;
mod ingress;
mod kind;
mod manifest;
mod meta;
pub mod names;
mod object;
mod pod;
mod policy;
mod protocol;
mod secret;
mod service;
pub mod time;
mod validate;

pub use cluster::{Namespace, Node, NodeAddress, NodeSpec, NodeStatus};
pub use error::{DocumentError, FieldError, ModelError};
pub use ingress::{
    DEFAULT_CLASS_ANNOTATION, HttpIngressPath, HttpIngressRuleValue, INGRESS_CLASS,
    INGRESS_CONTROLLER, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, IngressStatus, IngressTls, LEGACY_CLASS_ANNOTATION,
    ServiceBackendPort, TLS_SECRET_TYPE, published_addresses,
};
pub use kind::Kind;
pub use manifest::{ObjectRef, parse_manifests, parse_object_refs};
pub use meta::{
    Condition, IntOrString, LabelSelector, LabelSelectorRequirement, ObjectMeta, SelectorError,
};
pub use object::{Object, list_json, object_key, to_yaml};
pub use pod::{
    Container, ContainerPort, Deployment, DeploymentSpec, ExecAction, HttpGetAction, Lifecycle,
    LifecycleHandler, Pod, PodIp, PodSpec, PodStatus, PodTemplate, Probe, SleepAction,
    TcpSocketAction,
};
pub use policy::{
    IpBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
pub use protocol::{Protocol, UnknownProtocol};
pub use secret::{Base64Error, Secret, base64_decode, base64_encode};
pub use service::{
    ClientIpConfig, DEFAULT_AFFINITY_TIMEOUT_SECONDS, Endpoint, EndpointConditions, EndpointPort,
    EndpointSlice, LoadBalancerIngress, LoadBalancerStatus, ObjectReference, Service, ServicePort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
pub use validate::validate;
