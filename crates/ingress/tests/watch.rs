//! Tier 0: the store side — the status address rule, the status writes (pure), and one pass
//! over an in-memory store (publish + write).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use ingress::Shared;
use ingress::watch::{StoredIngress, View, WatchConfig, desired_addresses, pass, status_writes};
use model::Kind;
use serde_json::{Value, json};
use store::{MemStore, Store, keys};

fn node(name: &str, ip: &str) -> model::Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    }))
    .unwrap()
}

fn lb_service(ips: &[&str]) -> model::Service {
    let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": "ingress-gateway", "namespace": "kube-system"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": ingress}}
    }))
    .unwrap()
}

#[test]
fn status_address_is_the_load_balancer_ip_else_every_node_ip_sorted() {
    let (n1, n2, n3) = (
        node("n1", "172.20.0.11"),
        node("n2", "172.20.0.9"),
        node("n3", "172.20.0.11"),
    );
    let nodes = vec![&n1, &n2, &n3];
    assert_eq!(
        desired_addresses(Some(&lb_service(&["172.20.0.240"])), &nodes),
        vec!["172.20.0.240"]
    );
    // No LoadBalancer IP (yet, or no Service): the nodes, numerically sorted, no duplicates.
    assert_eq!(
        desired_addresses(Some(&lb_service(&[])), &nodes),
        vec!["172.20.0.9", "172.20.0.11"]
    );
    assert_eq!(
        desired_addresses(None, &nodes),
        vec!["172.20.0.9", "172.20.0.11"]
    );
    assert!(desired_addresses(None, &[]).is_empty());
}

fn stored(name: &str, class: Option<&str>, status_ips: &[&str]) -> (String, StoredIngress) {
    let mut raw = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "uid": "u-1"},
        "spec": {"defaultBackend": be("web", 80)},
    });
    if let Some(c) = class {
        raw["spec"]["ingressClassName"] = json!(c);
    }
    if !status_ips.is_empty() {
        let list: Vec<Value> = status_ips.iter().map(|ip| json!({"ip": ip})).collect();
        raw["status"] = json!({"loadBalancer": {"ingress": list}});
    }
    let mut ingress: model::Ingress = serde_json::from_value(raw.clone()).unwrap();
    ingress.metadata.namespace = Some("default".into());
    (
        format!("objects/ingresses/default/{name}"),
        StoredIngress {
            ingress,
            raw,
            mod_revision: 7,
        },
    )
}

#[test]
fn status_writes_set_ours_fix_stale_ones_and_clear_what_left_our_class() {
    let ingresses: BTreeMap<String, StoredIngress> = [
        stored("new", Some("flatnet"), &[]),
        stored("right", Some("flatnet"), &["172.20.0.240"]),
        stored("stale", None, &["172.20.0.11"]),
        stored("left", Some("nginx"), &["172.20.0.240"]),
        stored("foreign", Some("nginx"), &["192.0.2.1"]),
    ]
    .into_iter()
    .collect();
    let served: BTreeSet<String> = ["default/new", "default/right", "default/stale"]
        .into_iter()
        .map(str::to_string)
        .collect();
    let desired = vec!["172.20.0.240".to_string()];
    let writes = status_writes(&ingresses, &served, &desired);
    let by_key: BTreeMap<&str, &Value> = writes
        .iter()
        .map(|w| (w.key.rsplit('/').next().unwrap(), &w.value))
        .collect();
    assert_eq!(
        by_key.keys().copied().collect::<Vec<_>>(),
        vec!["left", "new", "stale"]
    );
    assert_eq!(
        by_key["new"]["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "172.20.0.240"}])
    );
    assert_eq!(
        by_key["stale"]["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "172.20.0.240"}])
    );
    assert_eq!(by_key["left"]["status"]["loadBalancer"], json!({}));
    // Everything else of the object is kept; the write is conditional on the revision read.
    assert_eq!(by_key["new"]["metadata"]["uid"], "u-1");
    assert!(writes.iter().all(|w| w.mod_revision == 7));
    // Nothing to publish yet: no writes at all.
    assert!(status_writes(&ingresses, &served, &[]).is_empty());
}

#[tokio::test]
async fn one_pass_publishes_routes_and_writes_status_to_the_store() {
    let store = MemStore::new();
    let put = |key: &str, v: Value| {
        let store = store.clone();
        let key = key.to_string();
        async move {
            store
                .put(&key, serde_json::to_vec(&v).unwrap())
                .await
                .unwrap()
        }
    };
    put(
        "objects/ingresses/shop/web",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"rules": [rule(Some("shop.test"), vec![path("Prefix", "/", be("web", 80))])]}}),
    )
    .await;
    put(
        "objects/services/shop/web",
        serde_json::to_value(service("shop", "web", 80, None)).unwrap(),
    )
    .await;
    put(
        "objects/endpointslices/shop/web-abcde",
        serde_json::to_value(slice("shop", "web", None, 8080, &[("10.244.1.5", true)])).unwrap(),
    )
    .await;
    put(
        "objects/services/kube-system/ingress-gateway",
        serde_json::to_value(lb_service(&["172.20.0.240"])).unwrap(),
    )
    .await;
    put(
        "objects/nodes/_/node1",
        serde_json::to_value(node("node1", "172.20.0.11")).unwrap(),
    )
    .await;

    let mut view = View::default();
    for k in [
        Kind::Ingress,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
    ] {
        for kv in store.list(&keys::kind_prefix(k)).await.unwrap().0 {
            view.take(&kv);
        }
    }
    let shared = Shared::default();
    let cfg = WatchConfig {
        publish_service: Some("kube-system/ingress-gateway".into()),
        ..Default::default()
    };
    let report = pass(&store, &view, &shared, &cfg).await;
    assert_eq!(report.served, vec!["shop/web"]);
    assert_eq!(report.status_written, 1);
    assert!(shared.loaded.load(std::sync::atomic::Ordering::Acquire));
    let routes = shared.routes.load();
    let r = routes.route("shop.test", "/x").unwrap();
    assert_eq!(
        r.backend.endpoints,
        vec!["10.244.1.5:8080".parse().unwrap()]
    );
    let kv = store
        .get("objects/ingresses/shop/web")
        .await
        .unwrap()
        .unwrap();
    let v: Value = kv.decode().unwrap();
    assert_eq!(
        v["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "172.20.0.240"}])
    );
    // A second pass over the updated object writes nothing: no write loop.
    view.take(&kv);
    let report = pass(&store, &view, &shared, &cfg).await;
    assert_eq!(report.status_written, 0);
    // A pass over a stale view (the object changed since) loses the race cleanly.
    let mut old = View::default();
    for kv in store
        .list(&keys::kind_prefix(Kind::Ingress))
        .await
        .unwrap()
        .0
    {
        old.take(&kv);
    }
    put(
        "objects/ingresses/shop/web",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"defaultBackend": be("web", 80)}}),
    )
    .await;
    let report = pass(&store, &old, &shared, &cfg).await;
    assert_eq!(report.status_written, 0, "conditional write refused");
}

#[test]
fn a_stored_ingress_class_decides_whether_classless_ingresses_are_served() {
    let configured = ingress::ClassFilter::default();
    let mut view = View::default();
    // No IngressClass stored: the configured filter (flatnet serves classless ones).
    assert!(view.class_filter(&configured).serve_classless);
    let class = |default: &str| store::KeyValue {
        key: "objects/ingressclasses/_/flatnet".into(),
        value: serde_json::to_vec(&json!({
            "metadata": {"name": "flatnet",
                         "annotations": {"ingressclass.kubernetes.io/is-default-class": default}},
            "spec": {"controller": "flatnet.io/ingress-gateway"}}))
        .unwrap(),
        mod_revision: 1,
        create_revision: 1,
        lease: 0,
    };
    view.take(&class("false"));
    let f = view.class_filter(&configured);
    assert_eq!(f.class, "flatnet");
    assert!(
        !f.serve_classless,
        "not the default class: classless Ingresses are not ours"
    );
    view.take(&class("true"));
    assert!(view.class_filter(&configured).serve_classless);
    // Another class's object changes nothing for ours.
    let mut other = class("true");
    other.key = "objects/ingressclasses/_/nginx".into();
    other.value = serde_json::to_vec(&json!({"metadata": {"name": "nginx"},
        "spec": {"controller": "k8s.io/ingress-nginx"}}))
    .unwrap();
    view.take(&other);
    assert!(view.class_filter(&configured).serve_classless);
}

/// Waits (5 s at most) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: timed out");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn run_publishes_the_listing_then_each_change_and_keeps_routes_through_an_outage() {
    let store = MemStore::new();
    let put = |key: &str, v: Value| {
        let store = store.clone();
        let key = key.to_string();
        async move {
            store
                .put(&key, serde_json::to_vec(&v).unwrap())
                .await
                .unwrap()
        }
    };
    let ingress_for = |host: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"rules": [rule(Some(host), vec![path("Prefix", "/", be("web", 80))])]}})
    };
    put("objects/ingresses/shop/web", ingress_for("a.test")).await;
    put(
        "objects/services/shop/web",
        serde_json::to_value(service("shop", "web", 80, None)).unwrap(),
    )
    .await;
    let shared = std::sync::Arc::new(Shared::default());
    let task = tokio::spawn(ingress::watch::run(
        store.clone(),
        shared.clone(),
        WatchConfig::default(),
    ));
    let routes_to = |host: &str| shared.routes.load().route(host, "/").is_some();
    eventually("listing published", || routes_to("a.test")).await;

    put("objects/ingresses/shop/web", ingress_for("b.test")).await;
    eventually("change published", || {
        routes_to("b.test") && !routes_to("a.test")
    })
    .await;

    store.set_available(false);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(routes_to("b.test"), "routes kept while the store is away");
    store.set_available(true);
    put("objects/ingresses/shop/web", ingress_for("c.test")).await;
    eventually("followed again after the outage", || routes_to("c.test")).await;
    task.abort();
}
