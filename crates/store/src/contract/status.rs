//! What each agent reports: the value of `agents/<node>`, one part per feature.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Backend;

/// An agent whose `heartbeat` is older than this many seconds is considered down (it writes
/// its status at every lease renewal, far more often).
pub const AGENT_STALE_SECS: i64 = 20;

/// Value of `agents/<node>`, written by the agent whenever a part changes and at every lease
/// renewal. The parts' fields are flattened (the JSON is one object plus `proxy` and `policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The node the agent runs for.
    pub node: String,
    /// Pod routing between nodes.
    #[serde(flatten)]
    pub routes: RoutesStatus,
    /// The service proxy.
    #[serde(default)]
    pub proxy: ProxyStatus,
    /// NetworkPolicy enforcement.
    #[serde(default)]
    pub policy: PolicyStatus,
}

/// What pod routing reports: the lease, the underlay and the last apply of the routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutesStatus {
    /// The last apply succeeded completely.
    pub healthy: bool,
    /// Store revision of the last `subnets/` state applied completely to the kernel. Advances
    /// on every applied change and, through a re-list, at every renewal (every TTL/3) even when
    /// nothing changed.
    pub applied_revision: i64,
    /// The node's pod subnet (its lease).
    pub cidr: Ipv4Net,
    /// How pod traffic crosses between nodes.
    pub backend: Backend,
    /// The node's underlay address.
    #[serde(rename = "underlayIP")]
    pub underlay_ip: Ipv4Addr,
    /// The node's underlay device (the one holding `underlayIP`, where host-gw routes point).
    #[serde(default)]
    pub underlay_dev: String,
    /// Pod interface MTU written to the CNI conflist.
    pub mtu: u32,
    /// Why the last apply was not complete.
    pub last_error: Option<String>,
    /// Unix time of writing, in seconds.
    pub heartbeat: u64,
    /// Pod CIDRs of the other nodes this node routes to, as of the last complete apply.
    #[serde(default)]
    pub peers: Vec<Ipv4Net>,
}

/// What the service proxy reports (`proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyStatus {
    /// Store revision of the Services and EndpointSlices last applied completely (the listing's
    /// revision, then that of each watch event applied); 0 before the first apply. Every
    /// Service and EndpointSlice whose `mod_revision` is at most this is in the dataplane.
    pub applied_revision: i64,
    /// Services in the dataplane.
    pub services: usize,
    /// Frontends (address, protocol, port) in the dataplane.
    pub frontends: usize,
    /// Endpoints in the dataplane.
    pub endpoints: usize,
    /// Why the last apply failed.
    pub last_error: Option<String>,
}

/// What NetworkPolicy enforcement reports (`policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyStatus {
    /// Store revision of the Namespaces, Pods and NetworkPolicies last applied completely;
    /// 0 before the first apply. Every such object whose `mod_revision` is at most this is
    /// enforced.
    pub applied_revision: i64,
    /// NetworkPolicies compiled.
    pub policies: usize,
    /// Pods of this node with an address.
    pub local_pods: usize,
    /// Local pods isolated for ingress.
    pub isolated_ingress: usize,
    /// Local pods isolated for egress.
    pub isolated_egress: usize,
    /// Elements in the table's sets.
    pub elements: usize,
    /// Compile + diff + apply of the last batch, in microseconds.
    pub last_sync_micros: u64,
    /// Stored objects left out because they cannot be read (`Kind namespace/name: why`).
    pub ignored: Vec<String>,
    /// Why the last apply failed.
    pub last_error: Option<String>,
}

/// One part of a status, shared between the task that owns it and the writer of
/// `agents/<node>`: a change wakes `changed` (shared by every part of one agent).
#[derive(Debug, Clone, Default)]
pub struct Report<T> {
    status: Arc<Mutex<T>>,
    /// Woken when the status changes.
    pub changed: Arc<Notify>,
}

impl<T: Clone + PartialEq + Default> Report<T> {
    /// A report that wakes `changed` (the status writer) when it changes.
    pub fn notifying(changed: Arc<Notify>) -> Self {
        Report {
            status: Arc::default(),
            changed,
        }
    }

    /// The status now.
    pub fn get(&self) -> T {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the status; wakes the writer when it differs afterwards.
    pub fn set(&self, f: impl FnOnce(&mut T)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.clone();
        f(&mut s);
        if *s != before {
            self.changed.notify_one();
        }
    }
}
