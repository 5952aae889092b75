//! The lab: a flatnet cluster built from network namespaces on one machine, with a real etcd,
//! real pods (processes in namespaces) and real packets.
//!
//! # Layout
//! - `api`: the API server and scheduler part: defaulting, storing, binding pods, Deployments,
//!   Service allocations (with `allocator`, pure: clusterIPs, nodePorts, API defaults).
//! - `apiserver`: the Kubernetes REST API over `api` (discovery, get, list), for kubectl and
//!   client libraries; `flatnet lab kubeconfig` points at it.
//! - `columns`: the table columns of each kind, for `flatnet get` and the API server (pure).
//! - `names`: every name and path a lab uses (namespaces, state directories), in one place.
//! - `shell`: running `ip` and other host tools, and processes inside a namespace.
//! - `topology`: `lab up` / `lab down`: fabric bridge, node and external namespaces, etcd.
//! - `cleanup`: finds and removes everything a lab left behind, also after a crash.
//! - `runtime`: a minimal CNI runtime (conflist in, plugin chain executed as the spec says).
//! - `controller`: keeps Deployments at their replica count, writes EndpointSlices and
//!   LoadBalancer IPs (decided by `endpoints`, pure).
//! - `daemons`: the lab's long-running processes; stop (kill -9) and start them by name.
//! - `kubelet`: the kubelet role, one process per node: pods in, sandboxes and processes out.
//! - `resolv`: the pod's resolv.conf as the kubelet writes it (pure).
//! - `kube_dns`: the cluster DNS (`flatnet dns`) as `lab up` deploys it.
//! - `responder`: the built-in container that answers with the pod's name.
//! - `client`: how the CLI finds and connects to a running lab's store.
//!
//! Diagnostics (`trace`, `connectivity`, convergence, `status`) are the `inspect` crate's; it
//! uses the lab, the lab must not use it.
//!
//! The lab plays the parts a real cluster gets from elsewhere (kubelet, runtime, the machines
//! and their cabling). It must not reach into the agent, the plugin or the store's contents
//! beyond what those real parts would do.

pub mod allocator;
pub mod api;
pub mod apiserver;
pub mod cleanup;
pub mod client;
pub mod columns;
pub mod controller;
pub mod daemons;
pub mod endpoints;
pub mod kube_dns;
pub mod kubelet;
pub mod names;
pub mod resolv;
pub mod responder;
pub mod runtime;
pub mod shell;
pub mod topology;

pub use names::Lab;

pub use model::time::{parse_rfc3339, rfc3339};

/// Now as RFC 3339 in UTC (`2026-11-25T18:40:21Z`), as Kubernetes timestamps are written.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}
