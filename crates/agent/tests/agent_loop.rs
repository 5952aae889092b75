//! Tier 0: the agent loop (`run_with`) against `MemStore` and the in-memory dataplane:
//! watch handling, restarts, lease expiry, store outages, status and conflist.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use agent::{AgentConfig, AgentError, MemDataplanes};
use common::{TempDir, agent_config, put_config, wait_status, wait_until};
use routes::UnderlayInfo;
use routes::plan::{Route, VXLAN_DEVICE};
use store::contract::{Backend, LeaseAttrs};
use store::{MemStore, Store, keys};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TTL: Duration = Duration::from_secs(3);

fn dataplane(host: u8) -> MemDataplanes {
    MemDataplanes::mem(UnderlayInfo {
        dev: "eth0".into(),
        ip: Ipv4Addr::new(10, 99, 0, host),
        mtu: 1500,
    })
}

/// A running agent; dropping it without `stop` aborts the task.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Running {
    fn start(store: &MemStore, dp: &MemDataplanes, cfg: AgentConfig) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(agent::run_with(store.clone(), dp.clone(), cfg, async {
            let _ = rx.await;
        }));
        Running {
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) -> Result<(), AgentError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(common::WAIT, &mut self.task)
            .await
            .expect("agent stops")
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Routes to other nodes' pod CIDRs (the service CIDR route is checked on its own).
fn routes(dp: &MemDataplanes) -> Vec<Route> {
    dp.routes
        .lock()
        .unwrap()
        .state
        .routes
        .iter()
        .filter(|r| r.dst.to_string() != "10.96.0.0/16")
        .cloned()
        .collect()
}

fn has_route_to(dp: &MemDataplanes, cidr: &str) -> bool {
    dp.routes
        .lock()
        .unwrap()
        .state
        .routes
        .iter()
        .any(|r| r.dst.to_string() == cidr)
}

async fn put_remote(store: &MemStore, cidr: &str, node: &str, host: u8, backend: Backend) {
    let attrs = LeaseAttrs::new(node, Ipv4Addr::new(10, 99, 0, host), backend);
    store
        .put(&keys::subnet(cidr), serde_json::to_vec(&attrs).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn remote_node_appearing_and_leaving_changes_the_plan() {
    common::init_tracing();
    let dir = TempDir::new("watch");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "vxlan").await;
    let dp = dataplane(1);
    let agent = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    let st = wait_status(&store, "n1", "healthy", |s| s.routes.healthy).await;
    assert_eq!(
        (st.routes.cidr.to_string(), st.routes.mtu, st.routes.backend),
        ("10.244.0.0/24".into(), 1450, Backend::Vxlan)
    );
    assert!(dp.routes.lock().unwrap().state.vxlan.is_some());

    put_remote(&store, "10.244.9.0/24", "n9", 9, Backend::Vxlan).await;
    wait_until("route to the new node", || {
        has_route_to(&dp, "10.244.9.0/24")
    })
    .await;
    {
        let d = dp.routes.lock().unwrap();
        assert_eq!(d.state.neighbours.len(), 1);
        assert_eq!(
            d.state.fdb.iter().next().unwrap().dst,
            Ipv4Addr::new(10, 99, 0, 9)
        );
    }
    let rev = store.revision().await.unwrap();
    wait_status(&store, "n1", "applied the join", |s| {
        s.routes.applied_revision >= rev - 1
    })
    .await;

    store.delete(&keys::subnet("10.244.9.0/24")).await.unwrap();
    wait_until("route to the departed node removed", || {
        !has_route_to(&dp, "10.244.9.0/24")
    })
    .await;
    wait_until("neighbour and fdb removed", || {
        let d = dp.routes.lock().unwrap();
        d.state.neighbours.is_empty() && d.state.fdb.is_empty()
    })
    .await;
    assert!(
        dp.routes.lock().unwrap().state.vxlan.is_some(),
        "the device stays"
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_started_together_lease_different_subnets_and_route_to_each_other() {
    common::init_tracing();
    let dir = TempDir::new("pair");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    let (dp1, dp2) = (dataplane(1), dataplane(2));
    let a1 = Running::start(&store, &dp1, agent_config("n1", dir.path(), TTL));
    let a2 = Running::start(&store, &dp2, agent_config("n2", dir.path(), TTL));
    let s1 = wait_status(&store, "n1", "healthy", |s| s.routes.healthy).await;
    let s2 = wait_status(&store, "n2", "healthy", |s| s.routes.healthy).await;
    assert_ne!(s1.routes.cidr, s2.routes.cidr);
    let c1 = s1.routes.cidr.to_string();
    let c2 = s2.routes.cidr.to_string();
    wait_until("n1 routes to n2", || has_route_to(&dp1, &c2)).await;
    wait_until("n2 routes to n1", || has_route_to(&dp2, &c1)).await;
    let s1 = wait_status(&store, "n1", "reports n2 as a peer", |s| {
        s.routes.peers == vec![s2.routes.cidr]
    })
    .await;
    assert!(s1.routes.healthy);
    assert_eq!(
        routes(&dp1),
        vec![Route {
            dst: s2.routes.cidr,
            via: Ipv4Addr::new(10, 99, 0, 2),
            dev: "eth0".into(),
            onlink: false
        }]
    );
    // The conflist names the leased subnet, the IPAM dir and the MTU.
    let cfg = agent_config("n1", dir.path(), TTL);
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg.routes.cni_conf_path).unwrap()).unwrap();
    assert_eq!(
        conf,
        serde_json::json!({"cniVersion": "1.1.0", "name": "flatnet", "plugins": [
            {"type": "flatnet-cni", "subnet": c1, "dataDir": cfg.routes.ipam_dir, "mtu": 1500}]})
    );
    a1.stop().await.unwrap();
    a2.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_subnet_and_changes_nothing() {
    common::init_tracing();
    let dir = TempDir::new("restart");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "vxlan").await;
    put_remote(&store, "10.244.9.0/24", "n9", 9, Backend::Vxlan).await;
    let dp = dataplane(1);
    let a = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    wait_until("route to n9", || has_route_to(&dp, "10.244.9.0/24")).await;
    let before = wait_status(&store, "n1", "healthy", |s| s.routes.healthy).await;
    a.stop().await.unwrap();

    let state = dp.routes.lock().unwrap().state.clone();
    dp.routes.lock().unwrap().applied.clear();
    // While it was down, n9 left and n8 came.
    store.delete(&keys::subnet("10.244.9.0/24")).await.unwrap();
    put_remote(&store, "10.244.8.0/24", "n8", 8, Backend::Vxlan).await;
    let a = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    wait_until("route to n8", || has_route_to(&dp, "10.244.8.0/24")).await;
    wait_until("n9 gone", || !has_route_to(&dp, "10.244.9.0/24")).await;
    let after = wait_status(&store, "n1", "healthy again", |s| {
        s.routes.healthy && s.routes.heartbeat >= before.routes.heartbeat
    })
    .await;
    assert_eq!(after.routes.cidr, before.routes.cidr);
    let applied: Vec<String> = dp
        .routes
        .lock()
        .unwrap()
        .applied
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        applied.iter().all(|c| c.contains("10.244.8.0")
            || c.contains("10.244.9.0")
            || c.contains(":08 ")
            || c.contains(":09 ")),
        "only n8's and n9's entries changed: {applied:#?}"
    );
    assert!(
        !applied
            .iter()
            .any(|c| c.contains(VXLAN_DEVICE) && c.starts_with("add vxlan")),
        "{applied:#?}"
    );
    assert_eq!(dp.routes.lock().unwrap().state.vxlan, state.vxlan);
    a.stop().await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_with_the_same_subnet() {
    common::init_tracing();
    let dir = TempDir::new("expiry");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    let dp = dataplane(1);
    let a = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    let st = wait_status(&store, "n1", "healthy", |s| s.routes.healthy).await;
    let key = keys::subnet(&st.routes.cidr.to_string());
    let lease_before = store.get(&key).await.unwrap().unwrap().lease;
    store.expire_leases_now();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        if let Some(kv) = store.get(&key).await.unwrap()
            && kv.lease != lease_before
        {
            assert_ne!(kv.lease, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent re-creates its key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await.unwrap();
}

#[tokio::test]
async fn a_store_outage_leaves_the_dataplane_alone_and_it_converges_after() {
    common::init_tracing();
    let dir = TempDir::new("outage");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put_remote(&store, "10.244.9.0/24", "n9", 9, Backend::HostGw).await;
    put_remote(&store, "10.244.8.0/24", "n8", 8, Backend::HostGw).await;
    let dp = dataplane(1);
    let a = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    wait_until("routes", || routes(&dp).len() == 2).await;
    wait_status(&store, "n1", "healthy", |s| s.routes.healthy).await;
    assert!(
        has_route_to(&dp, "10.96.0.0/16"),
        "the node's own processes reach ClusterIPs through the service CIDR route"
    );
    let state = dp.routes.lock().unwrap().state.clone();
    dp.routes.lock().unwrap().applied.clear();

    store.set_available(false);
    tokio::time::sleep(TTL * 2).await; // a few renewals and re-watch attempts
    assert_eq!(dp.routes.lock().unwrap().state, state);
    assert!(
        dp.routes.lock().unwrap().applied.is_empty(),
        "nothing touched while the store was away"
    );
    store.set_available(true);

    store.delete(&keys::subnet("10.244.9.0/24")).await.unwrap();
    wait_until("converged after the outage", || {
        routes(&dp).len() == 1 && has_route_to(&dp, "10.244.8.0/24")
    })
    .await;
    a.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_dataplane_is_reported_unhealthy_with_the_error() {
    common::init_tracing();
    let dir = TempDir::new("unhealthy");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    let dp = dataplane(1);
    dp.routes.lock().unwrap().fail = Some("netlink says no".into());
    let a = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    let st = wait_status(&store, "n1", "unhealthy", |s| !s.routes.healthy).await;
    assert!(st.routes.last_error.unwrap().contains("netlink says no"));
    dp.routes.lock().unwrap().fail = None;
    let st = wait_status(&store, "n1", "recovers at the next renewal", |s| {
        s.routes.healthy
    })
    .await;
    assert_eq!(st.routes.last_error, None);
    a.stop().await.unwrap();
}

#[tokio::test]
async fn the_agent_waits_for_the_config_and_rejects_an_invalid_one() {
    common::init_tracing();
    let dir = TempDir::new("config");
    let store = MemStore::new();
    let dp = dataplane(1);
    let a = Running::start(&store, &dp, agent_config("n1", dir.path(), TTL));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.task.is_finished(), "waits for the config key");
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    wait_status(&store, "n1", "started once the config exists", |s| {
        s.routes.healthy
    })
    .await;
    a.stop().await.unwrap();

    let bad = MemStore::new();
    put_config(&bad, "10.244.0.0/16", 8, "host-gw").await;
    let err = agent::run_with(
        bad,
        dp,
        agent_config("n1", dir.path(), TTL),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, AgentError::Config { .. }) && err.to_string().contains("nodePrefixLength"),
        "{err}"
    );
}

#[tokio::test]
async fn an_exhausted_pod_cidr_stops_the_agent_with_a_clear_error() {
    common::init_tracing();
    let dir = TempDir::new("full");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/30", 30, "host-gw").await;
    put_remote(&store, "10.244.0.0/30", "n9", 9, Backend::HostGw).await;
    let err = agent::run_with(
        store,
        dataplane(1),
        agent_config("n1", dir.path(), TTL),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("10.244.0.0/30") && msg.contains("1 nodes hold leases"),
        "{msg}"
    );
}
