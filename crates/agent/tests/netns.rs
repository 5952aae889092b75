//! Tier 1: the whole agent against real kernels: two agents with etcd converging over a VXLAN
//! underlay (restart, etcd outage, a node leaving), and one agent serving its health ports as
//! services change. Each test has network namespaces of its own, removed on every path. Needs
//! root and `ip`, the etcd test also the etcd binary; prints SKIPPED otherwise, unless
//! REQUIRE_NETNS=1 (then it fails). The route plans and the service proxy alone against the
//! kernel are tested in `routes/tests/netns.rs` and `services/tests/netns.rs`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::TempDir;
use routes::plan::{ROUTE_PROTOCOL, UnderlayInfo, VXLAN_DEVICE};
use serde_json::Value;
use store::Store;
use testkit::{IpMonitor, TestNs, http_get, kernel_routes, two_nodes, within};

/// What the `ip monitor` lines about flatnet's route items mention: the VXLAN device, the pod
/// network, the agent's route protocol.
const FLATNET_ITEMS: &[&str] = &[VXLAN_DEVICE, "10.244.", "proto 70"];

#[test]
fn two_agents_with_etcd_converge_and_reach_each_other() {
    let Some(n) = two_nodes(3) else { return };
    let dir = TempDir::new("etcd");
    let Some(mut etcd) = testkit::start_etcd(dir.path()) else {
        return;
    };
    common::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let endpoints = vec![etcd.endpoint.clone()];
        let store = store::EtcdStore::connect(&endpoints, agent::DEFAULT_STORE_PREFIX)
            .await
            .unwrap();
        common::put_config(&store, "10.244.0.0/16", 24, "vxlan").await;
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for (node, ns) in [("node-a", &n.a), ("node-b", &n.b)] {
            let mut cfg = common::agent_config(node, dir.path(), Duration::from_secs(6));
            cfg.netns = Some(ns.path());
            cfg.etcd_endpoints = endpoints.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            tasks.push(tokio::spawn(agent::run(
                cfg,
                services::HealthConfig::default(),
                async {
                    let _ = rx.await;
                },
            )));
        }
        let start = std::time::Instant::now();
        let sa = common::wait_status(&store, "node-a", "healthy", |s| s.routes.healthy).await;
        let sb = common::wait_status(&store, "node-b", "healthy", |s| s.routes.healthy).await;
        assert_ne!(sa.routes.cidr, sb.routes.cidr);
        let (ca, cb) = (sa.routes.cidr.to_string(), sb.routes.cidr.to_string());
        let has = |ns: &TestNs, cidr: &str| {
            kernel_routes(ns, ROUTE_PROTOCOL)
                .iter()
                .any(|r| r.0 == cidr)
        };
        common::wait_until("each node routes to the other", || {
            has(&n.a, &cb) && has(&n.b, &ca)
        })
        .await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "converged in {took:?}");
        let b_vtep = sb.routes.cidr.network().to_string();
        assert!(
            n.a.exec_ok(&["ping", "-c", "1", "-W", "2", &b_vtep]),
            "a reaches b's subnet over vxlan"
        );
        assert_eq!(
            (sa.routes.mtu, sa.routes.underlay_ip),
            (1450, Ipv4Addr::new(10, 99, 3, 1))
        );

        // An agent restart keeps its subnet and the peer's route untouched.
        let monitor = IpMonitor::start(&n.a, FLATNET_ITEMS);
        let _ = stops.remove(0).send(());
        tokio::time::timeout(common::WAIT, tasks.remove(0))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let stopped_at = store.revision().await.unwrap();
        let mut cfg = common::agent_config("node-a", dir.path(), Duration::from_secs(6));
        cfg.netns = Some(n.a.path());
        cfg.etcd_endpoints = endpoints.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.insert(0, tx);
        tasks.insert(
            0,
            tokio::spawn(agent::run(cfg, services::HealthConfig::default(), async {
                let _ = rx.await;
            })),
        );
        let sa2 = common::wait_status(&store, "node-a", "healthy after restart", |s| {
            s.routes.healthy && s.routes.applied_revision > stopped_at
        })
        .await;
        assert_eq!(sa2.routes.cidr, sa.routes.cidr);
        let events = tokio::task::spawn_blocking(move || monitor.stop())
            .await
            .unwrap();
        assert!(events.is_empty(), "a restart touches nothing: {events:#?}");

        // etcd goes away for a while: both dataplanes stay exactly as they are.
        let (routes_a, routes_b) = (
            kernel_routes(&n.a, ROUTE_PROTOCOL),
            kernel_routes(&n.b, ROUTE_PROTOCOL),
        );
        let (client_port, peer_port) = (etcd.client_port(), etcd.peer_port());
        let monitor = IpMonitor::start(&n.a, FLATNET_ITEMS);
        etcd.stop();
        tokio::time::sleep(Duration::from_secs(5)).await; // two renewals fail
        assert_eq!(
            (
                kernel_routes(&n.a, ROUTE_PROTOCOL),
                kernel_routes(&n.b, ROUTE_PROTOCOL)
            ),
            (routes_a, routes_b)
        );
        assert!(
            n.a.exec_ok(&["ping", "-c", "1", "-W", "2", &b_vtep]),
            "traffic flows without etcd"
        );
        etcd = store::EtcdProcess::start_on(dir.path(), client_port, peer_port).unwrap();
        let back_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for node in ["node-a", "node-b"] {
            common::wait_status(&store, node, "reporting again after the outage", |s| {
                s.routes.healthy && s.routes.heartbeat > back_at
            })
            .await;
        }
        let events = tokio::task::spawn_blocking(move || monitor.stop())
            .await
            .unwrap();
        assert!(
            events.is_empty(),
            "an etcd outage touches nothing: {events:#?}"
        );

        // b leaves for good: its lease is revoked, a drops its entries.
        let _ = stops.remove(1).send(());
        tokio::time::timeout(common::WAIT, tasks.remove(1))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let kv = store.get(&store::keys::subnet(&cb)).await.unwrap().unwrap();
        store.revoke_lease(kv.lease).await.unwrap();
        common::wait_until("a forgets b", || !has(&n.a, &cb)).await;
        assert!(
            n.a.ip_json(&["neigh", "show", "dev", VXLAN_DEVICE])
                .is_empty()
        );

        for tx in stops {
            let _ = tx.send(());
        }
        for t in tasks {
            tokio::time::timeout(common::WAIT, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    });
}

/// The whole agent (in-memory store and dataplane) with its health servers in a namespace of
/// its own: a LoadBalancer with externalTrafficPolicy Local put in the store opens its
/// health-check node port, a scale change shows in the answer within a second, `/healthz`
/// answers on the configured address, and deleting the service closes the port.
#[test]
fn the_agent_serves_health_ports_as_services_change() {
    use agent::MemDataplanes;
    use services::HealthConfig;
    use store::MemStore;
    let Some(ns) = testkit::netns!("flt-agent-health") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new("agent-health");
    let store = MemStore::new();
    let put = |key: String, v: Value| {
        let store = store.clone();
        rt.block_on(async move { store.put(&key, serde_json::to_vec(&v).unwrap()).await })
            .unwrap();
    };
    rt.block_on(common::put_config(&store, "10.244.0.0/16", 24, "host-gw"));
    let svc = |etp: &str| {
        serde_json::json!({"metadata": {"name": "shop", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "selector": {"app": "shop"},
                 "externalTrafficPolicy": etp, "healthCheckNodePort": 32200,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}})
    };
    let slice = |ips: &[&str]| {
        let eps: Vec<Value> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}))
            .collect();
        serde_json::json!({"metadata": {"name": "shop-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "shop"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
    };
    put("objects/services/default/shop".into(), svc("Local"));
    put(
        "objects/endpointslices/default/shop-x".into(),
        slice(&["10.244.0.6", "10.244.0.7"]),
    );
    let dp = MemDataplanes::mem(UnderlayInfo {
        dev: "eth0".into(),
        ip: Ipv4Addr::new(10, 99, 0, 1),
        mtu: 1500,
    });
    let mut cfg = common::agent_config("n1", dir.path(), Duration::from_secs(3));
    cfg.netns = Some(ns.path());
    let health = HealthConfig {
        healthz_bind: Some("127.0.0.1:10266".parse().unwrap()),
        ..HealthConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(agent::run_with_health(
        store.clone(),
        dp,
        cfg,
        health,
        async {
            let _ = stopped.await;
        },
    ));
    let count = |want: &str| {
        http_get(&ns, "127.0.0.1:32200", "/healthz").is_ok_and(|(_, t)| t.contains(want))
    };
    within(
        "the port to answer 2 endpoints",
        Duration::from_secs(10),
        || count("\"localEndpoints\": 2"),
    );
    assert_eq!(http_get(&ns, "127.0.0.1:32200", "/").unwrap().0, 200);
    put(
        "objects/endpointslices/default/shop-x".into(),
        slice(&["10.244.0.6", "10.244.0.7", "10.244.0.8"]),
    );
    let took = within("the scale-up to show", Duration::from_secs(1), || {
        count("\"localEndpoints\": 3")
    });
    eprintln!("scale change answered after {took:?}");
    put("objects/endpointslices/default/shop-x".into(), slice(&[]));
    within("503 without endpoints", Duration::from_secs(1), || {
        http_get(&ns, "127.0.0.1:32200", "/").is_ok_and(|(s, _)| s == 503)
    });
    let (status, text) = http_get(&ns, "127.0.0.1:10266", "/healthz").unwrap();
    assert_eq!(status, 200, "{text}");
    // externalTrafficPolicy Cluster needs no health check: the port closes.
    put("objects/services/default/shop".into(), svc("Cluster"));
    within("the port to close", Duration::from_secs(1), || {
        http_get(&ns, "127.0.0.1:32200", "/") == Err(std::io::ErrorKind::ConnectionRefused)
    });
    let _ = stop.send(());
    rt.block_on(task).unwrap().unwrap();
}
