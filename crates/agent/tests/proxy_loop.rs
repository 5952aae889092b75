//! Tier 0: the service proxy inside the agent loop, against `MemStore` and the in-memory
//! dataplane: first load, incremental changes, restarts, status.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use agent::MemDataplanes;
use common::{TempDir, agent_config, put_config, wait_status, wait_until};
use routes::UnderlayInfo;
use serde_json::json;
use store::{MemStore, Store};
use tokio::sync::oneshot;

const TTL: Duration = Duration::from_secs(3);

fn dataplane() -> MemDataplanes {
    MemDataplanes::mem(UnderlayInfo {
        dev: "eth0".into(),
        ip: Ipv4Addr::new(10, 99, 0, 1),
        mtu: 1500,
    })
}

fn start(
    store: &MemStore,
    dp: &MemDataplanes,
    dir: &TempDir,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = agent_config("n1", dir.path(), TTL);
    let task = tokio::spawn({
        let (store, dp) = (store.clone(), dp.clone());
        async move {
            let _ = agent::run_with(store, dp, cfg, async {
                let _ = rx.await;
            })
            .await;
        }
    });
    (tx, task)
}

async fn put_service(store: &MemStore, name: &str, ip: &str) {
    let v = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    store
        .put(
            &format!("objects/services/default/{name}"),
            serde_json::to_vec(&v).unwrap(),
        )
        .await
        .unwrap();
}

async fn put_slice(store: &MemStore, service: &str, ips: &[&str]) {
    let eps: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "n2"}))
        .collect();
    let v = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abcde"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    store
        .put(
            &format!("objects/endpointslices/default/{service}-abcde"),
            serde_json::to_vec(&v).unwrap(),
        )
        .await
        .unwrap();
}

fn element(dp: &MemDataplanes, map: &str, key: &str) -> Option<String> {
    dp.proxy
        .lock()
        .unwrap()
        .elements
        .get(&(map.to_string(), key.to_string()))
        .cloned()
}

#[tokio::test]
async fn services_become_map_elements_and_changes_touch_only_their_elements() {
    common::init_tracing();
    let dir = TempDir::new("proxy");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put_service(&store, "web", "10.96.0.20").await;
    put_slice(&store, "web", &["10.244.1.5", "10.244.1.6"]).await;
    put_service(&store, "empty", "10.96.0.21").await;
    let dp = dataplane();
    let (stop, task) = start(&store, &dp, &dir);

    let rev = store.revision().await.unwrap();
    let st = wait_status(&store, "n1", "services applied", |s| {
        s.proxy.applied_revision >= rev
    })
    .await;
    assert_eq!((st.proxy.services, st.proxy.last_error), (2, None));
    assert_eq!(
        element(&dp, "services", "10.96.0.20 . tcp . 80").as_deref(),
        Some("goto lb-2")
    );
    assert_eq!(
        element(&dp, "backends", "10.96.0.20 . tcp . 80 . 1").as_deref(),
        Some("10.244.1.6 . 8080")
    );
    assert_eq!(
        element(&dp, "no-endpoints", "10.96.0.21 . tcp . 80").as_deref(),
        Some("goto refuse")
    );
    {
        let d = dp.proxy.lock().unwrap();
        assert_eq!(d.transactions, vec![(d.transactions[0].0, true)]);
        assert!(d.chains.contains("lb-2") && d.chains.contains("nat-prerouting"));
    }

    // One endpoint more: one transaction without a flush, touching only web's elements.
    put_slice(&store, "web", &["10.244.1.5", "10.244.1.6", "10.244.1.7"]).await;
    wait_until("third endpoint", || {
        element(&dp, "backends", "10.96.0.20 . tcp . 80 . 2").is_some()
    })
    .await;
    {
        let d = dp.proxy.lock().unwrap();
        let last = *d.transactions.last().unwrap();
        // services element replaced (delete + add) and one backend added.
        assert_eq!(last, (3, false), "{:?}", d.transactions);
        assert!(d.chains.contains("lb-3"));
        // lb-2 is unused now; it stays (deleted with others later, or used again as it is).
        assert!(d.chains.contains("lb-2"));
    }
    assert_eq!(
        element(&dp, "services", "10.96.0.20 . tcp . 80").as_deref(),
        Some("goto lb-3")
    );

    // Deleting the service removes every element it had.
    store.delete("objects/services/default/web").await.unwrap();
    wait_until("web gone", || {
        element(&dp, "services", "10.96.0.20 . tcp . 80").is_none()
    })
    .await;
    let left: Vec<_> = dp
        .proxy
        .lock()
        .unwrap()
        .elements
        .keys()
        .filter(|(_, k)| k.contains("10.96.0.20"))
        .cloned()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test]
async fn a_restarted_agent_reloads_the_maps_in_one_transaction_and_drops_stale_chains() {
    common::init_tracing();
    let dir = TempDir::new("proxy-restart");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put_service(&store, "web", "10.96.0.20").await;
    put_slice(&store, "web", &["10.244.1.5", "10.244.1.6"]).await;
    let dp = dataplane();
    let (stop, task) = start(&store, &dp, &dir);
    wait_until("loaded", || {
        element(&dp, "services", "10.96.0.20 . tcp . 80").is_some()
    })
    .await;
    let _ = stop.send(());
    let _ = task.await;

    // While the agent is down, web loses an endpoint.
    put_slice(&store, "web", &["10.244.1.5"]).await;
    let (stop, task) = start(&store, &dp, &dir);
    wait_until("reloaded", || {
        element(&dp, "services", "10.96.0.20 . tcp . 80").as_deref() == Some("goto lb-1")
    })
    .await;
    {
        let d = dp.proxy.lock().unwrap();
        assert_eq!(d.transactions.len(), 2);
        assert!(
            d.transactions[1].1,
            "the reload flushes inside its transaction"
        );
        assert!(!d.chains.contains("lb-2"), "chain of the old run deleted");
        assert!(element_absent(&d, "backends", "10.96.0.20 . tcp . 80 . 1"));
    }
    let _ = stop.send(());
    let _ = task.await;
}

fn element_absent(d: &services::MemNft, map: &str, key: &str) -> bool {
    !d.elements.contains_key(&(map.to_string(), key.to_string()))
}

#[tokio::test]
async fn a_failed_apply_is_reported_and_retried_as_a_full_reload() {
    common::init_tracing();
    let dir = TempDir::new("proxy-fail");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put_service(&store, "web", "10.96.0.20").await;
    let dp = dataplane();
    dp.proxy.lock().unwrap().fail = Some("nft: Operation not permitted".into());
    let (stop, task) = start(&store, &dp, &dir);
    let st = wait_status(&store, "n1", "error reported", |s| {
        s.proxy.last_error.is_some()
    })
    .await;
    assert!(
        st.proxy
            .last_error
            .unwrap()
            .contains("Operation not permitted")
    );
    dp.proxy.lock().unwrap().fail = None;
    let st = wait_status(&store, "n1", "recovered", |s| {
        s.proxy.last_error.is_none() && s.proxy.applied_revision > 0
    })
    .await;
    assert_eq!(st.proxy.services, 1);
    assert!(
        dp.proxy.lock().unwrap().transactions[0].1,
        "first successful apply is a full load"
    );
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test]
async fn unused_chains_are_deleted_together_jumping_ones_first() {
    common::init_tracing();
    let dir = TempDir::new("proxy-chains");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    let v = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}});
    store
        .put(
            "objects/services/default/web",
            serde_json::to_vec(&v).unwrap(),
        )
        .await
        .unwrap();
    put_slice(&store, "web", &["10.244.1.5", "10.244.1.6"]).await;
    let dp = dataplane();
    let (stop, task) = start(&store, &dp, &dir);
    wait_until("ext-2", || {
        element(&dp, "services", "10.99.0.1 . tcp . 30080").as_deref() == Some("goto ext-2")
    })
    .await;
    // Each new count leaves ext-N and lb-N of the old one unused; once UNUSED_CHAINS_KEPT are
    // unused they go in one run, those that jump (ext-N) before their targets (lb-N): the
    // fake, like the kernel, refuses to delete a chain that is still jumped to.
    let steps = services::proxy::UNUSED_CHAINS_KEPT / 2 + 1;
    let ips: Vec<String> = (0..steps + 2)
        .map(|i| format!("10.244.1.{}", i + 5))
        .collect();
    for n in 3..=steps + 2 {
        let eps: Vec<&str> = ips[..n].iter().map(String::as_str).collect();
        put_slice(&store, "web", &eps).await;
        let rev = store.revision().await.unwrap();
        let st = wait_status(&store, "n1", "applied", |s| s.proxy.applied_revision >= rev).await;
        assert_eq!(st.proxy.last_error, None);
    }
    let last = steps + 2;
    let chains = dp.proxy.lock().unwrap().chains.clone();
    assert!(
        chains.contains(&format!("ext-{last}")) && chains.contains(&format!("lb-{last}")),
        "{chains:?}"
    );
    assert!(
        !chains.contains("ext-2") && !chains.contains("lb-2"),
        "unused chains deleted: {chains:?}"
    );
    // A count seen before comes back: its chain is made again.
    put_slice(&store, "web", &["10.244.1.5", "10.244.1.6"]).await;
    wait_until("ext-2 again", || {
        element(&dp, "services", "10.99.0.1 . tcp . 30080").as_deref() == Some("goto ext-2")
    })
    .await;
    let chains = dp.proxy.lock().unwrap().chains.clone();
    assert!(
        chains.contains("ext-2") && chains.contains("lb-2"),
        "{chains:?}"
    );
    let _ = stop.send(());
    let _ = task.await;
}
