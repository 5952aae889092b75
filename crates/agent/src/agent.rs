//! The composition: read the network config, start routing (which leases the subnet and reads
//! the underlay), then run routing, the service proxy, policy enforcement and the proxy's
//! health servers side by side, and write their reports as one `agents/<node>` status.

use std::future::Future;
use std::sync::Arc;

use netpol::{PolicyDataplane, PolicyReport};
use routes::{Dataplane, Routes};
use services::{HealthConfig, ProxyConfig, ProxyDataplane, ProxyHealth, ProxyReport};
use store::Store;
use store::contract::{self, AgentStatus, ConfigError, NetworkConfig, Report, RoutesStatus, keys};
use store::reflector::Backoff;
use tokio::sync::Notify;
use tokio::time::sleep;
use tracing::Instrument;

use crate::{AgentConfig, AgentError, Dataplanes};

/// The agent with an explicit store and dataplanes (`run` uses etcd and the node's netns).
/// Returns `Ok(())` once `shutdown` completes; the dataplane and the lease are left as they are
/// (the lease runs out after its TTL unless the agent comes back), so a restart is hitless.
pub async fn run_with<S: Store, R: Dataplane, P: ProxyDataplane, Q: PolicyDataplane>(
    store: S,
    dp: Dataplanes<R, P, Q>,
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with_health(store, dp, cfg, HealthConfig::disabled(), shutdown).await
}

/// [`run_with`], also serving the proxy's health ports of `health` in the node's namespace
/// (`run` serves kube-proxy's defaults; `run_with` none, as tests run several agents in one
/// namespace).
pub async fn run_with_health<S: Store, R: Dataplane, P: ProxyDataplane, Q: PolicyDataplane>(
    store: S,
    dp: Dataplanes<R, P, Q>,
    cfg: AgentConfig,
    health: HealthConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let span = tracing::info_span!("agent", node = %cfg.routes.node);
    let body = async move {
        let net = wait_config(&store).await?;
        let changed = Arc::new(Notify::new());
        let reports = Reports {
            routes: Report::notifying(changed.clone()),
            proxy: ProxyReport::notifying(changed.clone()),
            policy: PolicyReport::notifying(changed.clone()),
        };
        let node = cfg.routes.node.clone();
        let mut routes = Routes::start(
            store.clone(),
            dp.routes.clone(),
            net.clone(),
            cfg.routes.clone(),
            reports.routes.clone(),
        )
        .await?;
        let underlay = routes.underlay().clone();
        let proxy_health = ProxyHealth::default();
        let health_servers =
            services::health_server::serve(health, cfg.netns.clone(), proxy_health.clone());
        let proxy = services::proxy::run(
            store.clone(),
            dp.proxy.clone(),
            ProxyConfig {
                node: node.clone(),
                addresses: vec![underlay.ip],
                cluster_cidr: net.pod_cidr,
                service_cidr: net.service_cidr,
                underlay_dev: underlay.dev.clone(),
                lb_pool: net.load_balancer_pool,
            },
            reports.proxy.clone(),
            proxy_health,
        );
        let policy = netpol::run::run(
            store.clone(),
            dp.policy.clone(),
            node.clone(),
            reports.policy.clone(),
        );
        let status = publish(store.clone(), node, changed, reports);
        tokio::select! {
            r = routes.run() => r.map_err(AgentError::from),
            () = proxy => Ok(()),
            () = policy => Ok(()),
            () = health_servers => Ok(()),
            () = status => Ok(()),
        }
    };
    tokio::select! {
        r = body.instrument(span.clone()) => r,
        () = shutdown => {
            tracing::info!(parent: &span, "shutting down; dataplane and lease left in place");
            Ok(())
        }
    }
}

/// The parts of one agent's status, each owned by its task.
struct Reports {
    routes: Report<Option<RoutesStatus>>,
    proxy: ProxyReport,
    policy: PolicyReport,
}

/// Writes `agents/<node>` whenever a part changes (and at every lease renewal), once routing
/// has reported.
async fn publish<S: Store>(store: S, node: String, changed: Arc<Notify>, reports: Reports) {
    loop {
        changed.notified().await;
        let Some(routes) = reports.routes.get() else {
            continue;
        };
        let status = AgentStatus {
            node: node.clone(),
            routes,
            proxy: reports.proxy.get(),
            policy: reports.policy.get(),
        };
        if let Err(e) = contract::write_status(&store, &status).await {
            tracing::debug!(error = %e, "cannot write agent status");
        }
    }
}

/// Waits out store outages (and a missing config key) with backoff; an invalid config ends it.
async fn wait_config<S: Store>(store: &S) -> Result<NetworkConfig, AgentError> {
    let mut backoff = Backoff::new();
    loop {
        match contract::read_config(store).await {
            Ok(net) => return Ok(net),
            Err(ConfigError::Invalid(reason)) => {
                return Err(AgentError::Config {
                    key: keys::CONFIG.to_string(),
                    reason,
                });
            }
            Err(ConfigError::Missing) => tracing::warn!(
                key = keys::CONFIG,
                "network config not in the store yet, waiting"
            ),
            Err(ConfigError::Store(e)) if e.is_retryable() => {
                tracing::warn!(error = %e, "store unavailable, waiting for the network config")
            }
            Err(ConfigError::Store(e)) => return Err(e.into()),
        }
        sleep(backoff.next_delay()).await;
    }
}
