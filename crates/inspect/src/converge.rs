//! Is the cluster converged on the store? Read by `flatnet wait --converged` and `flatnet
//! status`: nodes registered and Ready, every agent applied the subnet leases and config as
//! they are now (so at least as they were when the caller started), Deployments expanded,
//! pods Ready or failed, and the controller's work done: every Service's EndpointSlices as
//! [`endpoints::desired_slices`] says, every LoadBalancer Service an address while the pool
//! has room; every agent's service proxy and NetworkPolicy enforcement caught up with the
//! newest object they read.

use std::collections::{BTreeMap, BTreeSet};

use model::{EndpointSlice, Pod, Service};
use serde_json::Value;
use store::{Store, StoreError};

use crate::endpoints;
use services::lb::{self, LbState};

/// An agent that has not reported for this long is considered down.
pub const AGENT_STALE_SECS: i64 = 20;

/// What `status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// What is not converged yet; `wait --converged` waits for this to be empty.
    pub pending: Vec<String>,
    /// Problems no waiting fixes (a full LoadBalancer pool): shown, not waited for.
    pub notes: Vec<String>,
}

/// What is not converged yet, in plain words; empty when converged.
pub async fn pending(store: &impl Store) -> Result<Vec<String>, StoreError> {
    Ok(report(store).await?.pending)
}

/// What is not converged yet, and the problems waiting does not fix.
pub async fn report(store: &impl Store) -> Result<Report, StoreError> {
    let mut out = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (nodes, _) = store
        .list(&store::keys::kind_prefix(model::Kind::Node))
        .await?;
    let (subnets, _) = store.list(store::keys::SUBNETS).await?;
    let config = store.get(store::keys::CONFIG).await?;
    let (agents, _) = store.list(store::keys::AGENTS).await?;
    // The newest Service or EndpointSlice every agent's service proxy must have applied.
    let mut services_needed = 0;
    for prefix in ["objects/services/", "objects/endpointslices/"] {
        let (kvs, _) = store.list(prefix).await?;
        services_needed = kvs
            .iter()
            .map(|kv| kv.mod_revision)
            .fold(services_needed, i64::max);
    }
    // The newest Namespace, Pod or NetworkPolicy every agent's policy enforcement must have
    // applied (a pod's labels, address or node can change what a policy allows).
    let mut policy_needed = 0;
    for prefix in [
        "objects/namespaces/",
        "objects/pods/",
        "objects/networkpolicies/",
    ] {
        let (kvs, _) = store.list(prefix).await?;
        policy_needed = kvs
            .iter()
            .map(|kv| kv.mod_revision)
            .fold(policy_needed, i64::max);
    }
    let lease_cidrs: BTreeSet<String> = subnets
        .iter()
        .filter_map(|kv| store::keys::subnet_cidr(&kv.key))
        .collect();
    // The newest change an agent must have seen: a lease or the network config.
    let needed = subnets
        .iter()
        .map(|kv| kv.mod_revision)
        .chain(config.iter().map(|kv| kv.mod_revision))
        .max()
        .unwrap_or(0);
    for kv in &nodes {
        let Ok(node) = kv.decode::<Value>() else {
            continue;
        };
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ready = crate::api::is_ready(&node);
        if !ready {
            out.push(format!("node {name} is not Ready"));
        }
        let Some(agent) = agents
            .iter()
            .find(|a| a.key == store::keys::agent(name))
            .and_then(|a| a.decode::<Value>().ok())
        else {
            out.push(format!("agent on {name} has not reported yet"));
            continue;
        };
        let heartbeat = agent["heartbeat"].as_i64().unwrap_or(0);
        if now - heartbeat > AGENT_STALE_SECS {
            out.push(format!(
                "agent on {name} has not reported for {} s (is it running?)",
                now - heartbeat
            ));
        }
        if let Some(err) = agent["lastError"].as_str() {
            out.push(format!("agent on {name}: {err}"));
        }
        if agent["healthy"] != true {
            out.push(format!("agent on {name} is not healthy"));
        }
        if agent["appliedRevision"].as_i64().unwrap_or(0) < needed {
            out.push(format!(
                "agent on {name} has applied revision {} but the leases are at {needed}",
                agent["appliedRevision"].as_i64().unwrap_or(0)
            ));
        }
        let proxy = &agent["proxy"];
        let proxied = proxy["appliedRevision"].as_i64().unwrap_or(0);
        if proxied < services_needed {
            out.push(format!(
                "service proxy on {name} has applied revision {proxied} but services are at {services_needed}"
            ));
        }
        if let Some(err) = proxy["lastError"].as_str() {
            out.push(format!("service proxy on {name}: {err}"));
        }
        let policy = &agent["policy"];
        let enforced = policy["appliedRevision"].as_i64().unwrap_or(0);
        if enforced < policy_needed {
            out.push(format!(
                "network policy on {name} has applied revision {enforced} but pods, namespaces and policies are at {policy_needed}"
            ));
        }
        if let Some(err) = policy["lastError"].as_str() {
            out.push(format!("network policy on {name}: {err}"));
        }
        if let Some(peers) = agent["peers"].as_array() {
            let own = agent["cidr"].as_str().unwrap_or_default();
            let applied: BTreeSet<String> = peers
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            let want: BTreeSet<String> = lease_cidrs
                .iter()
                .filter(|c| c.as_str() != own)
                .cloned()
                .collect();
            for missing in want.difference(&applied) {
                out.push(format!("agent on {name} has no route to {missing} yet"));
            }
            for stale in applied.difference(&want) {
                out.push(format!(
                    "agent on {name} still routes {stale}, whose lease is gone"
                ));
            }
        }
    }
    // Agents renew every third of the TTL: less than half left means renewals are missed.
    for kv in subnets.iter().filter(|kv| kv.lease != 0) {
        let (left, granted) = store.lease_ttl(kv.lease).await?;
        if granted > 0 && left * 2 < granted {
            let node = kv
                .decode::<Value>()
                .ok()
                .and_then(|v| v["node"].as_str().map(str::to_string))
                .unwrap_or_default();
            out.push(format!(
                "lease of {} ({node}) expires in {left} s: its agent has not renewed it",
                store::keys::subnet_cidr(&kv.key).unwrap_or_default()
            ));
        }
    }
    let (deployments, _) = store
        .list(&store::keys::kind_prefix(model::Kind::Deployment))
        .await?;
    let (pods, _) = store
        .list(&store::keys::kind_prefix(model::Kind::Pod))
        .await?;
    let pods: Vec<Value> = pods
        .iter()
        .filter_map(|kv| kv.decode::<Value>().ok())
        .collect();
    for kv in &deployments {
        let Ok(d) = kv.decode::<Value>() else {
            continue;
        };
        let (ns, name) = (
            d.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default"),
            d.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        let want = d
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let have = pods
            .iter()
            .filter(|p| {
                p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
                    && crate::api::owned_by_deployment(p, name)
            })
            .count();
        if have != want {
            out.push(format!("deployment {ns}/{name} has {have} of {want} pods"));
        }
    }
    // Pods made later for a Deployment of that revision count too; so does any other pod
    // (a lab does not change under a `wait`).
    for p in &pods {
        let phase = p
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        let ready = crate::api::is_ready(p);
        if !(ready || phase == "Failed" || phase == "Succeeded") {
            out.push(format!(
                "pod {}/{} is {phase}{}",
                p.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                p.pointer("/status/message")
                    .and_then(Value::as_str)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut notes = Vec::new();
    controller_pending(store, &nodes, &pods, &mut out, &mut notes).await?;
    ingress_pending(store, &nodes, &mut out).await?;
    Ok(Report {
        pending: out,
        notes,
    })
}

/// The lab's ingress gateway's part: every Ingress it serves (class `flatnet`, or no class)
/// shows the addresses the gateway publishes. Nothing to wait for when the gateway's Service
/// does not exist.
async fn ingress_pending(
    store: &impl Store,
    nodes: &[store::KeyValue],
    out: &mut Vec<String>,
) -> Result<(), StoreError> {
    use crate::topology::{INGRESS_GATEWAY, INGRESS_GATEWAY_NAMESPACE};
    let key = store::keys::object(
        model::Kind::Service,
        Some(INGRESS_GATEWAY_NAMESPACE),
        INGRESS_GATEWAY,
    );
    let Some(gateway) = store
        .get(&key)
        .await?
        .and_then(|kv| kv.decode::<Service>().ok())
    else {
        return Ok(());
    };
    let nodes: Vec<model::Node> = nodes.iter().filter_map(|kv| kv.decode().ok()).collect();
    let node_refs: Vec<&model::Node> = nodes.iter().collect();
    let want = model::published_addresses(Some(&gateway), &node_refs);
    let class_key = store::keys::object(model::Kind::IngressClass, None, model::INGRESS_CLASS);
    let class: Option<model::IngressClass> =
        store.get(&class_key).await?.and_then(|kv| kv.decode().ok());
    let classless = model::IngressClass::serves_classless(class.as_ref(), true);
    let (ingresses, _) = store
        .list(&store::keys::kind_prefix(model::Kind::Ingress))
        .await?;
    for kv in &ingresses {
        let Ok(ing) = kv.decode::<model::Ingress>() else {
            continue;
        };
        if !ing.served_by(model::INGRESS_CLASS, classless) {
            continue;
        }
        let shows = ing.status_ips();
        if shows != want {
            out.push(format!(
                "ingress {} shows addresses [{}], the gateway publishes [{}]",
                ing.key(),
                shows.join(", "),
                want.join(", ")
            ));
        }
    }
    Ok(())
}

/// The controller's part: EndpointSlices and LoadBalancer addresses.
async fn controller_pending(
    store: &impl Store,
    nodes: &[store::KeyValue],
    pods: &[Value],
    out: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(), StoreError> {
    let (services, _) = store
        .list(&store::keys::kind_prefix(model::Kind::Service))
        .await?;
    let services: Vec<Service> = services
        .iter()
        .filter_map(|kv| kv.decode::<Service>().ok())
        .collect();
    let pods: Vec<Pod> = pods
        .iter()
        .filter_map(|p| serde_json::from_value(p.clone()).ok())
        .collect();
    let zones: BTreeMap<String, String> = nodes
        .iter()
        .filter_map(|kv| kv.decode::<model::Node>().ok())
        .filter_map(|n| {
            let z = n.metadata.labels.get(endpoints::LABEL_ZONE)?.clone();
            Some((n.metadata.name, z))
        })
        .collect();
    let (slices, _) = store
        .list(&store::keys::kind_prefix(model::Kind::EndpointSlice))
        .await?;
    let stored: BTreeMap<(String, String), EndpointSlice> = slices
        .iter()
        .filter_map(|kv| kv.decode::<EndpointSlice>().ok())
        .filter(endpoints::is_managed)
        .map(|s| {
            (
                (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone(),
                ),
                s,
            )
        })
        .collect();
    let desired = endpoints::desired_slices(&services, &pods, &zones);
    let service_of = |s: &EndpointSlice| {
        format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata
                .labels
                .get(endpoints::LABEL_SERVICE_NAME)
                .map(String::as_str)
                .unwrap_or("?")
        )
    };
    let mut behind = BTreeSet::new();
    let mut wanted = BTreeSet::new();
    for d in &desired {
        let id = (
            d.metadata.namespace.clone().unwrap_or_default(),
            d.metadata.name.clone(),
        );
        if !stored
            .get(&id)
            .is_some_and(|s| endpoints::same_content(s, d))
        {
            behind.insert(service_of(d));
        }
        wanted.insert(id);
    }
    for svc in behind {
        out.push(format!(
            "service {svc}: endpointslices not up to date yet (controller)"
        ));
    }
    for (id, s) in &stored {
        if !wanted.contains(id) {
            out.push(format!(
                "endpointslice {}/{} of service {} is no longer wanted but still stored (controller)",
                id.0,
                id.1,
                service_of(s)
            ));
        }
    }
    let pool = crate::controller::lb_pool(store).await?;
    for (id, state) in lb::allocate_lb(&services, pool) {
        let shown = services
            .iter()
            .find(|s| s.key() == id)
            .and_then(|s| s.load_balancer_ip().map(str::to_string));
        match state {
            LbState::Assigned(ip) if shown.as_deref() != Some(ip.to_string().as_str()) => out.push(
                format!("service {id}: LoadBalancer address {ip} not assigned yet (controller)"),
            ),
            LbState::Pending(why) => match shown {
                Some(ip) => out.push(format!(
                    "service {id}: still shows LoadBalancer address {ip} ({why})"
                )),
                None => notes.push(format!("service {id}: LoadBalancer address pending: {why}")),
            },
            LbState::None => {
                if let Some(ip) = shown {
                    out.push(format!(
                        "service {id} is not a LoadBalancer but still shows address {ip} (controller)"
                    ));
                }
            }
            LbState::Assigned(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use store::MemStore;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    async fn put(s: &MemStore, key: &str, v: Value) {
        s.put(key, serde_json::to_vec(&v).expect("json"))
            .await
            .expect("put");
    }

    /// What is pending for the controller (the agents' service proxies and policy
    /// enforcement are tested apart).
    fn controller_only(p: Vec<String>) -> Vec<String> {
        p.into_iter()
            .filter(|l| !l.starts_with("service proxy on") && !l.starts_with("network policy on"))
            .collect()
    }

    #[tokio::test]
    async fn policy_enforcement_must_apply_the_newest_pod_namespace_or_policy() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        put(
            &s,
            "objects/networkpolicies/default/deny",
            json!({"metadata": {"name": "deny", "namespace": "default"}, "spec": {"podSelector": {}}}),
        )
        .await;
        let rev = s.revision().await.expect("rev");
        assert_eq!(
            pending(&s).await.expect("pending"),
            vec![
                format!(
                    "network policy on node1 has applied revision 0 but pods, namespaces and policies are at {rev}"
                ),
                format!(
                    "network policy on node2 has applied revision 0 but pods, namespaces and policies are at {rev}"
                ),
            ]
        );
        for a in ["node1", "node2"] {
            let kv = s
                .get(&store::keys::agent(a))
                .await
                .expect("get")
                .expect("agent");
            let mut v: Value = kv.decode().expect("json");
            v["policy"] = json!({"appliedRevision": rev, "lastError": if a == "node1" { json!("nft: Operation not permitted") } else { Value::Null }});
            put(&s, &store::keys::agent(a), v).await;
        }
        assert_eq!(
            pending(&s).await.expect("pending"),
            vec!["network policy on node1: nft: Operation not permitted".to_string()]
        );
    }

    #[tokio::test]
    async fn service_proxies_must_apply_the_newest_service_change() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        put(
            &s,
            "objects/services/default/x",
            json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.40", "ports": [{"port": 80}]}}),
        )
        .await;
        let rev = s.revision().await.expect("rev");
        assert_eq!(
            pending(&s).await.expect("pending"),
            vec![
                format!("service proxy on node1 has applied revision 0 but services are at {rev}"),
                format!("service proxy on node2 has applied revision 0 but services are at {rev}"),
            ]
        );
        for a in ["node1", "node2"] {
            let kv = s
                .get(&store::keys::agent(a))
                .await
                .expect("get")
                .expect("agent");
            let mut v: Value = kv.decode().expect("json");
            v["proxy"] = json!({"appliedRevision": rev, "lastError": if a == "node2" { json!("nft: No such file or directory") } else { Value::Null }});
            put(&s, &store::keys::agent(a), v).await;
        }
        assert_eq!(
            pending(&s).await.expect("pending"),
            vec!["service proxy on node2: nft: No such file or directory".to_string()]
        );
    }

    /// Pending lines about Ingresses.
    async fn ingress_lines(s: &MemStore) -> Vec<String> {
        pending(s)
            .await
            .expect("pending")
            .into_iter()
            .filter(|l| l.starts_with("ingress "))
            .collect()
    }

    #[tokio::test]
    async fn served_ingresses_must_show_the_gateways_addresses() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        let ing = |name: &str, class: &str, ips: &[&str]| {
            let list: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
            json!({"metadata": {"name": name, "namespace": "default"},
                   "spec": {"ingressClassName": class, "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
                   "status": {"loadBalancer": {"ingress": list}}})
        };
        put(
            &s,
            "objects/ingresses/default/web",
            ing("web", "flatnet", &[]),
        )
        .await;
        put(
            &s,
            "objects/ingresses/default/other",
            ing("other", "nginx", &[]),
        )
        .await;
        // No gateway Service: nothing to wait for.
        assert_eq!(ingress_lines(&s).await, Vec::<String>::new());
        put(
            &s,
            "objects/services/kube-system/ingress-gateway",
            json!({"metadata": {"name": "ingress-gateway", "namespace": "kube-system"},
                   "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "ports": [{"port": 80}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}),
        )
        .await;
        assert_eq!(
            ingress_lines(&s).await,
            vec!["ingress default/web shows addresses [], the gateway publishes [172.20.0.240]"]
        );
        put(
            &s,
            "objects/ingresses/default/web",
            ing("web", "flatnet", &["172.20.0.240"]),
        )
        .await;
        assert_eq!(ingress_lines(&s).await, Vec::<String>::new());
        // A classless Ingress is the default class's: waited for while the stored class
        // `flatnet` is the default (or none is stored), not once it stops being it.
        let classless = json!({"metadata": {"name": "plain", "namespace": "default"},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        put(&s, "objects/ingresses/default/plain", classless).await;
        assert_eq!(ingress_lines(&s).await.len(), 1);
        let class = |default: &str| {
            json!({"metadata": {"name": "flatnet",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": default}},
            "spec": {"controller": "flatnet.io/ingress-gateway"}})
        };
        put(&s, "objects/ingressclasses/_/flatnet", class("true")).await;
        assert_eq!(ingress_lines(&s).await.len(), 1);
        put(&s, "objects/ingressclasses/_/flatnet", class("false")).await;
        assert_eq!(ingress_lines(&s).await, Vec::<String>::new());
    }

    async fn two_node_cluster(s: &MemStore) {
        for (i, n) in ["node1", "node2"].iter().enumerate() {
            put(s, &store::keys::object(model::Kind::Node, None, n), json!({"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})).await;
            put(
                s,
                &store::keys::subnet(&format!("10.244.{i}.0/24")),
                json!({"node": n}),
            )
            .await;
        }
        let rev = s.revision().await.expect("rev");
        put(s, &store::keys::agent("node1"), json!({"node": "node1", "healthy": true, "appliedRevision": rev, "cidr": "10.244.0.0/24", "peers": ["10.244.1.0/24"], "heartbeat": now(), "lastError": null})).await;
        put(s, &store::keys::agent("node2"), json!({"node": "node2", "healthy": true, "appliedRevision": rev, "cidr": "10.244.1.0/24", "peers": ["10.244.0.0/24"], "heartbeat": now(), "lastError": null})).await;
    }

    #[tokio::test]
    async fn a_converged_cluster_has_no_problems() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        assert_eq!(pending(&s).await.expect("pending"), Vec::<String>::new());
    }

    #[tokio::test]
    async fn missing_routes_stale_agents_and_old_revisions_are_named() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        // a third lease nobody routes to yet
        put(
            &s,
            &store::keys::subnet("10.244.2.0/24"),
            json!({"node": "node3"}),
        )
        .await;
        put(&s, &store::keys::agent("node2"), json!({"node": "node2", "healthy": false, "appliedRevision": 1, "cidr": "10.244.1.0/24", "peers": ["10.244.0.0/24", "10.244.9.0/24"], "heartbeat": now() - 60, "lastError": "route 10.244.0.0/24: network unreachable"})).await;
        let p = pending(&s).await.expect("pending").join("\n");
        for want in [
            "agent on node1 has no route to 10.244.2.0/24 yet",
            "agent on node1 has applied revision",
            "agent on node2 has not reported for 60 s",
            "agent on node2: route 10.244.0.0/24: network unreachable",
            "agent on node2 is not healthy",
            "agent on node2 still routes 10.244.9.0/24, whose lease is gone",
        ] {
            assert!(p.contains(want), "{want:?} missing from:\n{p}");
        }
    }

    #[tokio::test]
    async fn deployments_and_pods_must_catch_up() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        put(
            &s,
            "objects/deployments/default/web",
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 2}}),
        )
        .await;
        put(&s, "objects/pods/default/web-a", json!({"metadata": {"name": "web-a", "namespace": "default", "ownerReferences": [{"kind": "Deployment", "name": "web"}]}, "status": {"phase": "Pending"}})).await;
        put(&s, "objects/pods/default/done", json!({"metadata": {"name": "done", "namespace": "default"}, "status": {"phase": "Succeeded"}})).await;
        let p = controller_only(pending(&s).await.expect("pending"));
        assert_eq!(
            p,
            vec![
                "deployment default/web has 1 of 2 pods".to_string(),
                "pod default/web-a is Pending".to_string()
            ]
        );
        put(&s, "objects/pods/default/web-b", json!({"metadata": {"name": "web-b", "namespace": "default", "ownerReferences": [{"kind": "Deployment", "name": "web"}]}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})).await;
        put(&s, "objects/pods/default/web-a", json!({"metadata": {"name": "web-a", "namespace": "default", "ownerReferences": [{"kind": "Deployment", "name": "web"}]}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})).await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn services_wait_for_their_endpointslices_and_stale_ones_are_named() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        let svc = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"port": 80}]}});
        put(&s, "objects/services/default/web", svc.clone()).await;
        let pod = json!({"metadata": {"name": "web-a", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]}});
        put(&s, "objects/pods/default/web-a", pod.clone()).await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            vec!["service default/web: endpointslices not up to date yet (controller)".to_string()]
        );
        let svc: Service = serde_json::from_value(svc).expect("svc");
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        let want = endpoints::desired_slices(&[svc], &[pod], &BTreeMap::new());
        assert_eq!(want.len(), 1);
        let key = format!("objects/endpointslices/default/{}", want[0].metadata.name);
        put(
            &s,
            &key,
            endpoints::to_stored(&want[0], None, "x", "2026-01-01T00:00:00Z"),
        )
        .await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            Vec::<String>::new()
        );
        // a managed slice nobody wants any more
        let mut stale = want[0].clone();
        stale.metadata.name = "web-zzzzz".into();
        put(
            &s,
            "objects/endpointslices/default/web-zzzzz",
            endpoints::to_stored(&stale, None, "y", "2026-01-01T00:00:00Z"),
        )
        .await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            vec!["endpointslice default/web-zzzzz of service default/web is no longer wanted but still stored (controller)".to_string()]
        );
    }

    #[tokio::test]
    async fn load_balancers_wait_for_an_address_while_the_pool_has_room() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        put(
            &s,
            store::keys::CONFIG,
            json!({"loadBalancerPool": "172.20.0.240/28"}),
        )
        .await;
        let rev = s.revision().await.expect("rev");
        for a in ["node1", "node2"] {
            let kv = s
                .get(&store::keys::agent(a))
                .await
                .expect("get")
                .expect("agent");
            let mut v: Value = kv.decode().expect("json");
            v["appliedRevision"] = json!(rev);
            put(&s, &store::keys::agent(a), v).await;
        }
        put(
            &s,
            "objects/services/default/lb",
            json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "ports": [{"port": 80}]}}),
        )
        .await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            vec!["service default/lb: LoadBalancer address 172.20.0.240 not assigned yet (controller)".to_string()]
        );
        put(
            &s,
            "objects/services/default/lb",
            json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}),
        )
        .await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            Vec::<String>::new()
        );
        // no longer a LoadBalancer but still showing the address
        put(
            &s,
            "objects/services/default/lb",
            json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}),
        )
        .await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            vec!["service default/lb is not a LoadBalancer but still shows address 172.20.0.240 (controller)".to_string()]
        );
    }
}
