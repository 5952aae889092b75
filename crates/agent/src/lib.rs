//! The node agent (design.md §1, §4, §5): one process per node. It leases the node's pod
//! subnet from the store (flannel's scheme), writes the node's CNI conflist, and keeps the
//! node's inter-node routes (host-gw) or VXLAN device, routes, neighbours and FDB entries
//! (vxlan) in line with every other node's lease — compile, then apply.
//!
//! # Layout
//! - [`plan`]: pure [`compile`] (leases -> [`NodePlan`]) and [`diff`] (plans -> [`Change`]s).
//! - [`config`]: the network config key, the CNI conflist, atomic file writes.
//! - [`lease`]: acquire, renew and re-claim the subnet lease.
//! - [`dataplane`]: the [`Dataplane`] seam and [`MemDataplane`], its in-memory fake.
//! - `kernel`: [`NetnsDataplane`], the only code here that touches the kernel (via `datapath`).
//! - `agent`: the loop ([`run_with`]): list + watch, renew, reconcile, status.
//! - [`proxy`]: the service proxy: Services + EndpointSlices -> `inet flatnet` map elements,
//!   applied incrementally (compiled by `plan::services`).
//! - [`health`]: the proxy's health servers (kube-proxy's `/healthz` on 10256 and the
//!   health-check node ports of `externalTrafficPolicy: Local` LoadBalancers).
//! - [`policy`]: NetworkPolicy enforcement: Namespaces + Pods + NetworkPolicies -> the sets of
//!   the `inet flatnet-policy` table for this node's pods, applied incrementally (compiled by
//!   `plan::policy`).
//!
//! Restarts are hitless: every route the agent installs carries [`plan::ROUTE_PROTOCOL`], so
//! an agent reads back what it owns and applies only the difference; nothing is flushed, not
//! on start, not on shutdown, not while the store is unreachable.
//!
//! This crate must not program anything outside the node namespace it is given, nor build
//! netlink messages itself (that is `datapath`'s job).

mod agent;
mod batch;
pub mod config;
pub mod dataplane;
pub mod health;
mod kernel;
pub mod lease;
pub mod plan;
pub mod policy;
pub mod proxy;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use agent::{AgentStatus, BACKOFF_MAX, BACKOFF_MIN, Shared, run_with, run_with_health};
pub use config::NetworkConfig;
pub use dataplane::{Dataplane, DataplaneError, MemDataplane, MemPolicy};
pub use health::HealthConfig;
pub use kernel::NetnsDataplane;
pub use lease::LeaseError;
pub use plan::{Backend, Change, Lease, LeaseAttrs, Mac, NodePlan, UnderlayInfo, compile, diff};

/// Default TTL of the subnet lease; renewed every third of it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Default store prefix (design.md §4).
pub const DEFAULT_STORE_PREFIX: &str = "/flatnet/";

/// How to run one node's agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name: the span field of every log line, the lease's `node`, `agents/<node>`.
    pub node: String,
    /// Network namespace the agent programs (`/run/netns/NAME`); `None`: its own. The agent
    /// process itself stays where it is (it reaches etcd from there).
    pub netns: Option<PathBuf>,
    pub etcd_endpoints: Vec<String>,
    /// Usually [`DEFAULT_STORE_PREFIX`].
    pub store_prefix: String,
    /// Underlay link in that namespace; its first IPv4 address is the node's underlay IP.
    pub underlay_dev: String,
    /// Where the node's CNI conflist goes (written through a temporary file and a rename).
    pub cni_conf_path: PathBuf,
    /// `dataDir` in the conflist: the IPAM directory of `flatnet-cni`.
    pub ipam_dir: PathBuf,
    /// Small local state (the last leased subnet) for restarts after the lease expired.
    pub state_dir: PathBuf,
    /// TTL of the subnet lease (whole seconds, at least 1); renewed every third of it.
    pub lease_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("network config (store key {key}): {reason}")]
    Config { key: String, reason: String },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Runs the agent for `cfg.node` until `shutdown` completes (then `Ok(())`), against etcd and
/// the namespace `cfg.netns`, with the proxy's health servers `health` (kube-proxy's
/// defaults, [`HealthConfig::default`]: `/healthz` on 0.0.0.0:10256 and the health-check node
/// ports).
/// Waits (with backoff) while etcd is unreachable or the `config` key is missing; fails on an
/// invalid config, a missing underlay device or address, an exhausted pod
/// CIDR, or a subnet taken over by another node.
pub async fn run(
    cfg: AgentConfig,
    health: HealthConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let dp = NetnsDataplane::open(cfg.netns.as_deref())?;
    let dp: Shared<NetnsDataplane> = Arc::new(Mutex::new(dp));
    let span = tracing::info_span!("agent", node = %cfg.node);
    let connect = async {
        let mut backoff = BACKOFF_MIN;
        loop {
            match store::EtcdStore::connect(&cfg.etcd_endpoints, &cfg.store_prefix).await {
                Ok(store) => return Ok(store),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(parent: &span, error = %e, retry_in = ?backoff, "etcd unreachable");
                }
                Err(e) => return Err(AgentError::Store(e)),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let store = tokio::select! {
        r = connect => r?,
        () = &mut shutdown => return Ok(()),
    };
    run_with_health(store, dp, cfg, health, shutdown).await
}
