use super::*;
use serde_json::json;

#[test]
fn pods_map_to_their_owning_deployment() {
    assert_eq!(
        deployment_of("objects/deployments/default/web", None),
        Some(("default".into(), "web".into()))
    );
    let pod = json!({"metadata": {"ownerReferences": [{"kind": "Deployment", "name": "web"}]}});
    assert_eq!(
        deployment_of("objects/pods/x/web-abc", Some(&pod)),
        Some(("x".into(), "web".into()))
    );
    assert_eq!(
        deployment_of("objects/pods/x/solo", Some(&json!({"metadata": {}}))),
        None
    );
    assert_eq!(deployment_of("objects/services/x/web", None), None);
}

mod endpoints_controller {
    use super::super::*;
    use serde_json::json;
    use store::{MemStore, WatchReceiver};

    async fn put(s: &MemStore, key: &str, v: Value) {
        s.put(key, serde_json::to_vec(&v).expect("json"))
            .await
            .expect("put");
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": {"app": "web"}},
               "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    fn service(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                            "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10)},
               "spec": spec, "status": {"loadBalancer": {}}})
    }

    fn web_spec() -> Value {
        json!({"clusterIP": "10.96.0.20", "selector": {"app": "web"},
               "ports": [{"name": "http", "port": 80, "targetPort": "http"}]})
    }

    /// A controller over `s` that has taken the current listing, and a watch from there.
    async fn start(s: &MemStore, pool: &str) -> (Endpoints<MemStore>, WatchReceiver) {
        let (kvs, rev) = s.list(store::keys::OBJECTS).await.expect("list");
        let mut eps = Endpoints::new(s.clone(), Some(pool.parse().expect("pool")));
        eps.reset(&kvs);
        let w = s.watch(store::keys::OBJECTS, rev + 1).await.expect("watch");
        (eps, w)
    }

    /// Reconciles and feeds events (its own writes included) until nothing happens for 100 ms.
    async fn settle(eps: &mut Endpoints<MemStore>, w: &mut WatchReceiver) {
        loop {
            eps.reconcile().await;
            match tokio::time::timeout(Duration::from_millis(100), w.recv()).await {
                Ok(Some(Ok(ev))) => {
                    eps.event(&ev);
                    while let Ok(Ok(ev)) = w.try_recv() {
                        eps.event(&ev);
                    }
                }
                _ if !eps.has_work() => break,
                _ => {}
            }
        }
    }

    async fn slices(s: &MemStore) -> Vec<Value> {
        let (kvs, _) = s.list("objects/endpointslices/").await.expect("list");
        kvs.iter().map(|kv| kv.decode().expect("json")).collect()
    }

    fn addresses(slice: &Value) -> Vec<(String, bool)> {
        slice["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                (
                    e["addresses"][0].as_str().expect("ip").to_string(),
                    e["conditions"]["ready"].as_bool().expect("ready"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn slices_follow_pods_and_are_written_only_when_they_change() {
        let s = MemStore::new();
        put(
            &s,
            "objects/services/default/web",
            service("web", web_spec()),
        )
        .await;
        put(&s, "objects/pods/default/a", pod("a", "10.244.0.5", true)).await;
        let (mut eps, mut w) = start(&s, "172.20.0.240/28").await;
        settle(&mut eps, &mut w).await;
        let got = slices(&s).await;
        assert_eq!(got.len(), 1);
        assert_eq!(addresses(&got[0]), vec![("10.244.0.5".into(), true)]);
        assert_eq!(got[0]["ports"][0]["port"], 8080);
        assert_eq!(got[0]["apiVersion"], "discovery.k8s.io/v1");
        let uid = got[0]["metadata"]["uid"].clone();
        assert!(uid.is_string());

        // nothing changed: nothing written (its own events and a full relist included)
        let rev = s.revision().await.expect("rev");
        settle(&mut eps, &mut w).await;
        let (kvs, _) = s.list(store::keys::OBJECTS).await.expect("list");
        eps.reset(&kvs);
        settle(&mut eps, &mut w).await;
        assert_eq!(
            s.revision().await.expect("rev"),
            rev,
            "no write without a change"
        );

        // a second pod, then the first turns unready: the same slice, updated
        put(&s, "objects/pods/default/b", pod("b", "10.244.0.6", true)).await;
        put(&s, "objects/pods/default/a", pod("a", "10.244.0.5", false)).await;
        settle(&mut eps, &mut w).await;
        let got = slices(&s).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["metadata"]["uid"], uid, "updated in place");
        assert_eq!(
            addresses(&got[0]),
            vec![("10.244.0.5".into(), false), ("10.244.0.6".into(), true)]
        );
    }

    #[tokio::test]
    async fn slices_go_with_their_service_or_selector_and_foreign_slices_stay() {
        let s = MemStore::new();
        put(
            &s,
            "objects/services/default/web",
            service("web", web_spec()),
        )
        .await;
        put(&s, "objects/services/default/db", service("db", web_spec())).await;
        put(&s, "objects/pods/default/a", pod("a", "10.244.0.5", true)).await;
        // a slice someone else manages, for a service without selector
        put(
            &s,
            "objects/services/default/ext",
            service("ext", json!({"ports": [{"port": 80}]})),
        )
        .await;
        let foreign = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "ext-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "ext"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}]});
        put(&s, "objects/endpointslices/default/ext-1", foreign.clone()).await;
        let (mut eps, mut w) = start(&s, "172.20.0.240/28").await;
        settle(&mut eps, &mut w).await;
        let names = |v: &[Value]| -> Vec<String> {
            v.iter()
                .map(|x| {
                    x["metadata"]["labels"]["kubernetes.io/service-name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        };
        assert_eq!(names(&slices(&s).await), vec!["db", "ext", "web"]);
        // selector removed from db: its slice goes
        let mut db = service("db", web_spec());
        db["spec"].as_object_mut().map(|m| m.remove("selector"));
        put(&s, "objects/services/default/db", db).await;
        // web deleted: its slice goes
        s.delete("objects/services/default/web")
            .await
            .expect("delete");
        settle(&mut eps, &mut w).await;
        let left = slices(&s).await;
        assert_eq!(names(&left), vec!["ext"]);
        assert_eq!(left[0], foreign, "a slice we do not manage is left alone");
    }

    async fn lb_ip(s: &MemStore, name: &str) -> Option<String> {
        status(s, name)
            .await
            .pointer("/loadBalancer/ingress/0/ip")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    async fn status(s: &MemStore, name: &str) -> Value {
        let kv = s
            .get(&format!("objects/services/default/{name}"))
            .await
            .expect("get")
            .expect("service");
        let v: Value = kv.decode().expect("json");
        v["status"].clone()
    }

    #[tokio::test]
    async fn load_balancers_get_pool_addresses_wait_when_it_is_full_and_release_them() {
        let s = MemStore::new();
        let lb = |extra: Value| {
            let mut spec = web_spec();
            spec["type"] = json!("LoadBalancer");
            spec.as_object_mut().map(|m| m.remove("clusterIP"));
            if let Some(e) = extra.as_object() {
                for (k, v) in e {
                    spec[k] = v.clone();
                }
            }
            spec
        };
        put(
            &s,
            "objects/services/default/a",
            service("a", lb(json!({}))),
        )
        .await;
        put(
            &s,
            "objects/services/default/bb",
            service("bb", lb(json!({}))),
        )
        .await;
        put(
            &s,
            "objects/services/default/ccc",
            service("ccc", lb(json!({}))),
        )
        .await;
        // two addresses: .240 and .241
        put(
            &s,
            store::keys::CONFIG,
            json!({"podCIDR": "10.244.0.0/16", "nodePrefixLength": 24, "backend": "host-gw", "loadBalancerPool": "172.20.0.240/31"}),
        )
        .await;
        let (mut eps, mut w) = start(&s, "172.20.0.240/31").await;
        settle(&mut eps, &mut w).await;
        assert_eq!(lb_ip(&s, "a").await.as_deref(), Some("172.20.0.240"));
        assert_eq!(lb_ip(&s, "bb").await.as_deref(), Some("172.20.0.241"));
        assert_eq!(lb_ip(&s, "ccc").await, None);
        let st = status(&s, "ccc").await;
        assert_eq!(
            st["conditions"][0]["type"],
            services::lb::CONDITION_LB_PENDING
        );
        assert_eq!(
            st["conditions"][0]["message"],
            "no free address in the LoadBalancer pool 172.20.0.240/31"
        );
        // How convergence reads this state (a full pool is a note, not something to wait for)
        // is `inspect::converge`'s test `a_full_load_balancer_pool_is_a_note_not_pending`.
        // a becomes ClusterIP: its address goes to ccc
        let mut a = service("a", lb(json!({})));
        a["spec"]["type"] = json!("ClusterIP");
        a["status"] = status(&s, "a").await;
        put(&s, "objects/services/default/a", a).await;
        settle(&mut eps, &mut w).await;
        assert_eq!(lb_ip(&s, "a").await, None);
        assert_eq!(lb_ip(&s, "ccc").await.as_deref(), Some("172.20.0.240"));
        assert!(status(&s, "ccc").await.get("conditions").is_none());
        // bb deleted: its address is free for the next one, which asks for it
        s.delete("objects/services/default/bb")
            .await
            .expect("delete");
        put(
            &s,
            "objects/services/default/dddd",
            service("dddd", lb(json!({"loadBalancerIP": "172.20.0.241"}))),
        )
        .await;
        settle(&mut eps, &mut w).await;
        assert_eq!(lb_ip(&s, "dddd").await.as_deref(), Some("172.20.0.241"));
    }
}
