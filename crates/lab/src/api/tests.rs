//! `apply` and `delete` of Services against a real etcd (skipped without one, a failure under
//! `REQUIRE_NETNS=1`): allocations are all-or-nothing, kept on update, released on delete and
//! race-free between concurrent applies.

use super::*;
use testkit::{TempDir, start_etcd};

fn parse(yaml: &str) -> Vec<Object> {
    model::parse_manifests(yaml, "test.yaml").expect("valid manifest")
}

fn service(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}\n---\n")
}

async fn connect(endpoint: &str, service_cidr: &str) -> EtcdStore {
    let s = EtcdStore::connect(&[endpoint.to_string()], crate::client::PREFIX)
        .await
        .expect("connect");
    s.put(
        store::keys::CONFIG,
        serde_json::to_vec(&json!({"serviceCIDR": service_cidr})).expect("json"),
    )
    .await
    .expect("config");
    ensure_builtin_namespaces(&s).await.expect("namespaces");
    s
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn spec_of(s: &EtcdStore, name: &str) -> Value {
    get(s, Kind::Service, Some("default"), Some(name))
        .await
        .expect("get")
        .remove(0)["spec"]
        .clone()
}

#[test]
fn concurrent_applies_never_share_a_cluster_ip_or_node_port() {
    let dir = TempDir::new("lab-api-race");
    let Some(etcd) = start_etcd(dir.path()) else {
        return;
    };
    rt().block_on(async {
        // A /27: 15 addresses in the upper band, so the services' preferred addresses collide.
        let s = connect(&etcd.endpoint, "10.96.0.0/27").await;
        let mut tasks = Vec::new();
        for i in 0..12 {
            let ep = etcd.endpoint.clone();
            tasks.push(tokio::spawn(async move {
                // one client each, as separate `flatnet apply` processes have
                let s = EtcdStore::connect(&[ep], crate::client::PREFIX)
                    .await
                    .expect("connect");
                let yaml = service(
                    &format!("s{i}"),
                    "  type: NodePort\n  ports: [{port: 80, name: a}, {port: 81, name: b}]",
                );
                apply(&s, parse(&yaml)).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("apply");
        }
        let svcs = get(&s, Kind::Service, Some("default"), None)
            .await
            .expect("list");
        assert_eq!(svcs.len(), 12);
        let mut ips = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for v in &svcs {
            let name = v["metadata"]["name"].as_str().expect("name").to_string();
            let ip = v["spec"]["clusterIP"]
                .as_str()
                .expect("clusterIP")
                .to_string();
            assert!(
                ips.insert(ip.clone(), name.clone()).is_none(),
                "{ip} given twice: {svcs:#?}"
            );
            for p in v["spec"]["ports"].as_array().expect("ports") {
                let np = p["nodePort"].as_u64().expect("nodePort");
                assert!(
                    ports.insert(np, name.clone()).is_none(),
                    "nodePort {np} twice"
                );
            }
        }
        // the index says the same
        let (index, _) = read_index(&s).await.expect("index");
        assert_eq!(index.cluster_ips.len(), 12);
        assert_eq!(index.node_ports.len(), 24);
    });
}

#[test]
fn a_taken_cluster_ip_or_out_of_range_node_port_fails_the_whole_apply() {
    let dir = TempDir::new("lab-api-refuse");
    let Some(etcd) = start_etcd(dir.path()) else {
        return;
    };
    rt().block_on(async {
        let s = connect(&etcd.endpoint, "10.96.0.0/12").await;
        apply(&s, parse(&service("a", "  clusterIP: 10.96.0.50\n  ports: [{port: 80}]")))
            .await
            .expect("a");
        let rev = s.revision().await.expect("rev");
        let yaml = [
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n".to_string(),
            service("b", "  ports: [{port: 80}]"),
            service("c", "  clusterIP: 10.96.0.50\n  ports: [{port: 80}]"),
        ]
        .concat();
        let err = apply(&s, parse(&yaml)).await.expect_err("taken").to_string();
        assert_eq!(
            err,
            "Service \"default/c\" is invalid: spec.clusterIP: Invalid value: \"10.96.0.50\": provided IP is already allocated (to service default/a) (nothing was applied)"
        );
        let yaml = service(
            "d",
            "  type: NodePort\n  ports: [{port: 80, nodePort: 80}]",
        );
        let err = apply(&s, parse(&yaml)).await.expect_err("range").to_string();
        assert!(
            err.contains("spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            "{err}"
        );
        assert_eq!(s.revision().await.expect("rev"), rev, "nothing was written");
        assert!(get(&s, Kind::Namespace, None, Some("x")).await.is_err());
    });
}

#[test]
fn reapply_keeps_allocations_and_delete_releases_them() {
    let dir = TempDir::new("lab-api-keep");
    let Some(etcd) = start_etcd(dir.path()) else {
        return;
    };
    rt().block_on(async {
        let s = connect(&etcd.endpoint, "10.96.0.0/12").await;
        let yaml = service("web", "  type: LoadBalancer\n  ports: [{port: 80, name: http}]");
        let a = apply(&s, parse(&yaml)).await.expect("apply");
        assert_eq!(a[0].action, "created");
        let first = spec_of(&s, "web").await;
        let ip = first["clusterIP"].as_str().expect("clusterIP").to_string();
        let np = first["ports"][0]["nodePort"].as_u64().expect("nodePort");
        assert_eq!(first["clusterIPs"], json!([ip]));
        // the controller's status survives a re-apply, which changes nothing
        update(&s, "objects/services/default/web", |v| {
            v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}});
            true
        })
        .await
        .expect("status");
        let a = apply(&s, parse(&yaml)).await.expect("apply");
        assert_eq!(a[0].action, "unchanged");
        // a change elsewhere keeps them too
        let changed = service("web", "  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80, name: http}]");
        assert_eq!(apply(&s, parse(&changed)).await.expect("apply")[0].action, "configured");
        let v = get(&s, Kind::Service, Some("default"), Some("web")).await.expect("get").remove(0);
        assert_eq!(v["spec"]["clusterIP"], ip.as_str());
        assert_eq!(v["spec"]["ports"][0]["nodePort"], np);
        assert_eq!(v["status"]["loadBalancer"]["ingress"][0]["ip"], "172.20.0.240");
        // delete releases: another service may ask for both at once
        delete(&s, Kind::Service, Some("default"), "web", Default::default()).await.expect("delete");
        let (index, _) = read_index(&s).await.expect("index");
        assert_eq!(index, allocator::Index::default());
        let other = service(
            "other",
            &format!("  type: NodePort\n  clusterIP: {ip}\n  ports: [{{port: 80, nodePort: {np}}}]"),
        );
        apply(&s, parse(&other)).await.expect("reuse");
        // a namespace delete releases its services' allocations
        apply(&s, parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")).await.expect("ns");
        apply(&s, parse("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  ports: [{port: 1}]\n")).await.expect("svc");
        delete(&s, Kind::Namespace, None, "x", Default::default()).await.expect("delete ns");
        let (index, _) = read_index(&s).await.expect("index");
        assert!(index.cluster_ips.values().all(|h| h.service == "default/other"), "{index:?}");
    });
}

#[test]
fn create_refuses_what_exists_and_changes_nothing() {
    let dir = TempDir::new("lab-api-create");
    let Some(etcd) = start_etcd(dir.path()) else {
        return;
    };
    rt().block_on(async {
        let s = connect(&etcd.endpoint, "10.96.0.0/24").await;
        let yaml = service("web", "  type: NodePort\n  ports: [{port: 80}]");
        let made = create(&s, parse(&yaml)).await.expect("create");
        assert_eq!(made[0].action, "created");
        let before = spec_of(&s, "web").await;
        // the same name again, asking for other ports: refused, the stored one untouched
        let other = service("web", "  type: NodePort\n  ports: [{port: 81}]");
        match create(&s, parse(&other)).await {
            Err(ApiError::AlreadyExists {
                kind,
                namespace,
                name,
            }) => assert_eq!(
                (kind.as_str(), namespace.as_deref(), name.as_str()),
                ("Service", Some("default"), "web")
            ),
            other => panic!("not AlreadyExists: {other:?}"),
        }
        assert_eq!(spec_of(&s, "web").await, before);
        let ns = parse("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n");
        assert!(matches!(
            create(&s, ns).await,
            Err(ApiError::AlreadyExists { .. })
        ));
        // apply still updates
        assert_eq!(
            apply(&s, parse(&other)).await.expect("apply")[0].action,
            "configured"
        );
    });
}
