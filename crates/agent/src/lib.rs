//! The node agent (design.md §1, §4-§7): one process per node, a thin composition of the
//! features. It reads the network config, then runs side by side:
//! - `routes`: the subnet lease, the CNI conflist and the routes (host-gw) or VXLAN
//!   device (vxlan) to every other node;
//! - `services`: the service proxy and kube-proxy's health servers;
//! - `netpol`: NetworkPolicy enforcement for this node's pods;
//!
//! and writes what they report as one typed status (`agents/<node>`,
//! [`store::contract::AgentStatus`]).
//!
//! # Layout
//! - here: [`AgentConfig`], [`AgentError`], [`Dataplanes`] (one per feature, real or fake),
//!   and [`run`] (etcd and the node's namespace).
//! - `agent`: the composition ([`run_with`], [`run_with_health`]) and the status writer.
//!
//! This crate must not decide anything a feature decides: it starts them and reports.

mod agent;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use agent::{run_with, run_with_health};
use netpol::{MemPolicy, NetnsPolicy};
pub use routes::RoutesConfig;
use routes::{MemRoutes, NetnsRoutes, Shared, UnderlayInfo};
use services::{HealthConfig, MemNft, NetnsProxy};

/// Default TTL of the subnet lease; renewed every third of it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Default store prefix (design.md §4).
pub const DEFAULT_STORE_PREFIX: &str = "/flatnet/";

/// How to run one node's agent: where it works and how it reaches the store; the rest is
/// routing's ([`RoutesConfig`]), whose `node` names the agent too (the span field of every
/// log line, the lease's `node`, `agents/<node>`).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Network namespace the agent programs (`/run/netns/NAME`); `None`: its own. The agent
    /// process itself stays where it is (it reaches etcd from there).
    pub netns: Option<PathBuf>,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// Usually [`DEFAULT_STORE_PREFIX`].
    pub store_prefix: String,
    /// The node, its underlay device, CNI conflist and IPAM paths, state and lease TTL.
    pub routes: RoutesConfig,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The network config is invalid.
    #[error("network config (store key {key}): {reason}")]
    Config {
        /// The store key of the config.
        key: String,
        /// What is wrong.
        reason: store::contract::InvalidConfig,
    },
    /// Routing stopped.
    #[error(transparent)]
    Routes(#[from] routes::RoutesError),
    /// The routes' side of the namespace does not open.
    #[error(transparent)]
    Dataplane(#[from] routes::DataplaneError),
    /// The proxy's side of the namespace does not open.
    #[error(transparent)]
    Proxy(#[from] services::OpenError),
    /// The policy side of the namespace does not open.
    #[error(transparent)]
    Netns(#[from] datapath::NetnsError),
    /// The store failed with an error that is not an outage.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// One dataplane per feature, each behind its own lock (a proxy sync does not hold up a route
/// change): real ones from [`Dataplanes::open`], fakes from [`Dataplanes::mem`].
#[derive(Debug)]
pub struct Dataplanes<R, P, Q> {
    /// Routing's.
    pub routes: Shared<R>,
    /// The service proxy's.
    pub proxy: Shared<P>,
    /// Policy enforcement's.
    pub policy: Shared<Q>,
}

impl<R, P, Q> Clone for Dataplanes<R, P, Q> {
    fn clone(&self) -> Self {
        Dataplanes {
            routes: self.routes.clone(),
            proxy: self.proxy.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The kernel's dataplanes of one namespace.
pub type NetnsDataplanes = Dataplanes<NetnsRoutes, NetnsProxy, NetnsPolicy>;
/// The fakes, for tests of the composition.
pub type MemDataplanes = Dataplanes<MemRoutes, MemNft, MemPolicy>;

impl NetnsDataplanes {
    /// Opens every feature's side of `netns` (`/run/netns/NAME`; `None`: the caller's own).
    pub fn open(netns: Option<&Path>) -> Result<Self, AgentError> {
        Ok(Dataplanes {
            routes: Arc::new(Mutex::new(NetnsRoutes::open(netns)?)),
            proxy: Arc::new(Mutex::new(NetnsProxy::open(netns)?)),
            policy: Arc::new(Mutex::new(NetnsPolicy::open(netns)?)),
        })
    }
}

impl MemDataplanes {
    /// Empty fakes on a node whose underlay is `underlay`.
    pub fn mem(underlay: UnderlayInfo) -> Self {
        Dataplanes {
            routes: Arc::new(Mutex::new(MemRoutes::new(underlay))),
            proxy: Arc::new(Mutex::new(MemNft::default())),
            policy: Arc::new(Mutex::new(MemPolicy::default())),
        }
    }
}

/// Runs the agent for `cfg.routes.node` until `shutdown` completes (then `Ok(())`), against etcd and
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
    let dp = NetnsDataplanes::open(cfg.netns.as_deref())?;
    let span = tracing::info_span!("agent", node = %cfg.routes.node);
    let connect = async {
        let mut backoff = store::reflector::Backoff::new();
        loop {
            match store::EtcdStore::connect(&cfg.etcd_endpoints, &cfg.store_prefix).await {
                Ok(store) => return Ok(store),
                Err(e) if e.is_retryable() => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(parent: &span, error = %e, ?retry_in, "etcd unreachable");
                    tokio::time::sleep(retry_in).await;
                }
                Err(e) => return Err(AgentError::Store(e)),
            }
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let store = tokio::select! {
        r = connect => r?,
        () = &mut shutdown => return Ok(()),
    };
    run_with_health(store, dp, cfg, health, shutdown).await
}
