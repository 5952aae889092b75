//! Helpers shared by the agent's test binaries.
#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;
use std::time::Duration;

use agent::AgentConfig;
use store::Store;

/// Every wait in these tests ends by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// Logs to the test's captured output; `RUST_LOG` filters (default: agent=debug).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("agent=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub use testkit::TempDir;

/// A config for `node` with every file under `dir/<node>/`.
pub fn agent_config(node: &str, dir: &Path, ttl: Duration) -> AgentConfig {
    let base = dir.join(node);
    AgentConfig {
        netns: None,
        etcd_endpoints: vec![],
        store_prefix: agent::DEFAULT_STORE_PREFIX.to_string(),
        routes: agent::RoutesConfig {
            node: node.to_string(),
            underlay_dev: "eth0".to_string(),
            cni_conf_path: base.join("net.d/10-flatnet.conflist"),
            ipam_dir: base.join("ipam"),
            state_dir: base.join("state"),
            lease_ttl: ttl,
        },
    }
}

pub async fn put_config<S: Store>(store: &S, pod_cidr: &str, prefix: u8, backend: &str) {
    let v = serde_json::json!({"podCIDR": pod_cidr, "nodePrefixLength": prefix, "serviceCIDR": "10.96.0.0/16", "backend": backend});
    store
        .put(store::keys::CONFIG, serde_json::to_vec(&v).unwrap())
        .await
        .unwrap();
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent status of `node`, if written.
pub async fn status<S: Store>(store: &S, node: &str) -> Option<store::contract::AgentStatus> {
    store
        .get(&store::keys::agent(node))
        .await
        .unwrap()
        .map(|kv| kv.decode().unwrap())
}

/// Polls the store until `cond` holds for `node`'s status.
pub async fn wait_status<S: Store>(
    store: &S,
    node: &str,
    what: &str,
    cond: impl Fn(&store::contract::AgentStatus) -> bool,
) -> store::contract::AgentStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = status(store, node).await
            && cond(&s)
        {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {node}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
