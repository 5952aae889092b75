//! Tier 0: NetworkPolicy enforcement inside the agent loop, against `MemStore` and the
//! in-memory dataplane: first load, incremental changes, pods of other nodes, restarts,
//! failures, status.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use agent::MemDataplanes;
use common::{TempDir, agent_config, put_config, wait_status, wait_until};
use routes::UnderlayInfo;
use serde_json::{Value, json};
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

/// Writes `v`; returns the store revision of the write.
async fn put(store: &MemStore, key: &str, v: Value) -> i64 {
    store
        .put(key, serde_json::to_vec(&v).unwrap())
        .await
        .unwrap()
}

async fn put_pod(store: &MemStore, name: &str, node: &str, ip: &str, app: &str) -> i64 {
    let v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"podIP": ip}});
    put(store, &format!("objects/pods/default/{name}"), v).await
}

async fn put_policy(store: &MemStore, name: &str, spec: Value) {
    let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec});
    put(store, &format!("objects/networkpolicies/default/{name}"), v).await;
}

fn elements(dp: &MemDataplanes) -> Vec<String> {
    dp.policy.lock().unwrap().elements()
}

/// web (n1) takes TCP 80 from pods labelled app=client.
fn allow_clients() -> Value {
    json!({"podSelector": {"matchLabels": {"app": "web"}},
           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                        "ports": [{"port": 80}]}]})
}

#[tokio::test]
async fn policies_become_set_elements_for_local_pods_and_changes_touch_only_theirs() {
    common::init_tracing();
    let dir = TempDir::new("policy");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put(
        &store,
        "objects/namespaces/_/default",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    )
    .await;
    put_pod(&store, "web", "n1", "10.244.1.5", "web").await;
    put_pod(&store, "client", "n2", "10.244.2.7", "client").await;
    put_pod(&store, "remote-web", "n2", "10.244.2.8", "web").await;
    // A finished pod is neither subject nor peer (its address may be reused).
    let mut done = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "done", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"podIP": "10.244.1.6", "phase": "Succeeded"}});
    put(&store, "objects/pods/default/done", done.clone()).await;
    put_policy(&store, "web-from-clients", allow_clients()).await;
    let dp = dataplane();
    let (stop, task) = start(&store, &dp, &dir);

    let rev = store.revision().await.unwrap();
    let st = wait_status(&store, "n1", "policy applied", |s| {
        s.policy.applied_revision >= rev
    })
    .await;
    assert_eq!(st.policy.last_error, None);
    assert_eq!(
        (
            st.policy.policies,
            st.policy.local_pods,
            st.policy.isolated_ingress
        ),
        (1, 1, 1)
    );
    // Only the running local pod is programmed; the remote web pod is its own node's
    // business.
    assert_eq!(
        elements(&dp),
        vec![
            "ingress-allow: 10.244.1.5 . 10.244.2.7 . tcp . 80",
            "ingress-isolated: 10.244.1.5",
        ]
    );
    {
        let d = dp.policy.lock().unwrap();
        assert_eq!(d.transactions, vec![(2, true)], "first load flushes");
        assert_eq!(d.scripts.len(), 1);
        assert!(d.scripts[0].contains("hook forward"));
    }

    // Running again: isolated like any web pod; finished: gone.
    done["status"]["phase"] = json!("Running");
    put(&store, "objects/pods/default/done", done.clone()).await;
    wait_until("running pod isolated", || {
        elements(&dp).contains(&"ingress-isolated: 10.244.1.6".to_string())
    })
    .await;
    done["status"]["phase"] = json!("Failed");
    put(&store, "objects/pods/default/done", done).await;
    wait_until("failed pod dropped", || {
        !elements(&dp).contains(&"ingress-isolated: 10.244.1.6".to_string())
    })
    .await;

    // A second client: one element more, in one transaction without a flush.
    put_pod(&store, "client2", "n2", "10.244.2.9", "client").await;
    wait_until("second client allowed", || {
        elements(&dp).contains(&"ingress-allow: 10.244.1.5 . 10.244.2.9 . tcp . 80".to_string())
    })
    .await;
    assert_eq!(
        *dp.policy.lock().unwrap().transactions.last().unwrap(),
        (1, false)
    );

    // A pod of another node changing its labels changes nothing here but the revision.
    let before = dp.policy.lock().unwrap().transactions.len();
    let rev = put_pod(&store, "remote-web", "n2", "10.244.2.8", "web2").await;
    wait_status(&store, "n1", "revision follows", |s| {
        s.policy.applied_revision >= rev
    })
    .await;
    assert_eq!(dp.policy.lock().unwrap().transactions.len(), before);

    // Deleting the policy un-isolates web: every element goes.
    store
        .delete("objects/networkpolicies/default/web-from-clients")
        .await
        .unwrap();
    wait_until("web no longer isolated", || elements(&dp).is_empty()).await;
    wait_status(&store, "n1", "policy deleted", |s| {
        (s.policy.policies, s.policy.elements) == (0, 0)
    })
    .await;
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test]
async fn a_restart_reloads_in_one_transaction_and_a_failure_is_reported_then_retried() {
    common::init_tracing();
    let dir = TempDir::new("policy-restart");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put_pod(&store, "web", "n1", "10.244.1.5", "web").await;
    put_pod(&store, "client", "n2", "10.244.2.7", "client").await;
    put_policy(&store, "web-from-clients", allow_clients()).await;
    let dp = dataplane();
    let (stop, task) = start(&store, &dp, &dir);
    wait_until("loaded", || elements(&dp).len() == 2).await;
    let _ = stop.send(());
    let _ = task.await;

    // While the agent is down the client moves; the restarted agent fails to program at
    // first, says so, and then reloads everything in one flushed transaction.
    let rev = put_pod(&store, "client", "n2", "10.244.2.70", "client").await;
    dp.policy.lock().unwrap().fail = Some("nft: Operation not permitted".into());
    let (stop, task) = start(&store, &dp, &dir);
    let st = wait_status(&store, "n1", "error reported", |s| {
        s.policy.last_error.is_some()
    })
    .await;
    assert!(
        st.policy
            .last_error
            .unwrap()
            .contains("Operation not permitted")
    );
    dp.policy.lock().unwrap().fail = None;
    let st = wait_status(&store, "n1", "recovered", |s| {
        s.policy.last_error.is_none() && s.policy.applied_revision >= rev
    })
    .await;
    assert_eq!(st.policy.elements, 2);
    assert_eq!(
        elements(&dp),
        vec![
            "ingress-allow: 10.244.1.5 . 10.244.2.70 . tcp . 80",
            "ingress-isolated: 10.244.1.5",
        ]
    );
    assert_eq!(
        dp.policy.lock().unwrap().transactions,
        vec![(2, true), (2, true)]
    );
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test]
async fn an_unreadable_policy_is_left_out_and_named_while_the_others_are_enforced() {
    common::init_tracing();
    let dir = TempDir::new("policy-bad");
    let store = MemStore::new();
    put_config(&store, "10.244.0.0/16", 24, "host-gw").await;
    put_pod(&store, "web", "n1", "10.244.1.5", "web").await;
    put_pod(&store, "client", "n2", "10.244.2.7", "client").await;
    put_policy(&store, "web-from-clients", allow_clients()).await;
    put_policy(
        &store,
        "bad",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}),
    )
    .await;
    let dp = dataplane();
    let (stop, task) = start(&store, &dp, &dir);
    let rev = store.revision().await.unwrap();
    let st = wait_status(&store, "n1", "applied", |s| {
        s.policy.applied_revision >= rev
    })
    .await;
    assert_eq!(st.policy.policies, 1);
    assert_eq!(st.policy.ignored.len(), 1, "{:?}", st.policy.ignored);
    assert!(
        st.policy.ignored[0].contains("networkpolicies/default/bad")
            && st.policy.ignored[0].contains("70000"),
        "{:?}",
        st.policy.ignored
    );
    assert_eq!(elements(&dp).len(), 2);
    let _ = stop.send(());
    let _ = task.await;
}
