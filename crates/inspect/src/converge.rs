//! Is the cluster converged on the store? Read by `flatnet wait --converged` and `flatnet
//! status`: nodes registered and Ready, every agent applied the subnet leases and config as
//! they are now (so at least as they were when the caller started), Deployments expanded,
//! pods Ready or failed, and the controller's work done: every Service's EndpointSlices as
//! [`endpoints::desired_slices`] says, every LoadBalancer Service an address while the pool
//! has room; every agent's service proxy and NetworkPolicy enforcement caught up with the
//! newest object they read.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use lab::endpoints;
use model::{EndpointSlice, Kind, Pod, Service};
use serde_json::Value;
use services::lb::{self, LbState};
use store::contract::{self, AgentStatus, LeaseAttrs, keys};
use store::{Store, StoreError};

/// An agent that has not reported for this long is considered down.
pub use store::contract::AGENT_STALE_SECS;

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

/// The newest `mod_revision` of any object of `kinds` (0 when there is none).
async fn newest(store: &impl Store, kinds: &[Kind]) -> Result<i64, StoreError> {
    let mut rev = 0;
    for kind in kinds {
        let (kvs, _) = store.list(&keys::kind_prefix(*kind)).await?;
        rev = kvs.iter().map(|kv| kv.mod_revision).fold(rev, i64::max);
    }
    Ok(rev)
}

/// What is not converged yet, and the problems waiting does not fix.
pub async fn report(store: &impl Store) -> Result<Report, StoreError> {
    let mut out = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (nodes, _) = store.list(&keys::kind_prefix(Kind::Node)).await?;
    let (subnets, _) = store.list(keys::SUBNETS).await?;
    let config = store.get(keys::CONFIG).await?;
    let (agents, _) = contract::read_statuses(store).await?;
    // The newest Service or EndpointSlice every agent's service proxy must have applied.
    let services_needed = newest(store, &[Kind::Service, Kind::EndpointSlice]).await?;
    // The newest Namespace, Pod or NetworkPolicy every agent's policy enforcement must have
    // applied (a pod's labels, address or node can change what a policy allows).
    let policy_needed = newest(store, &[Kind::Namespace, Kind::Pod, Kind::NetworkPolicy]).await?;
    let lease_cidrs: BTreeSet<Ipv4Net> = subnets
        .iter()
        .filter_map(|kv| contract::key_cidr(&kv.key))
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
        let ready = lab::api::is_ready(&node);
        if !ready {
            out.push(format!("node {name} is not Ready"));
        }
        match agents.get(name) {
            None => out.push(format!("agent on {name} has not reported yet")),
            Some(Err(e)) => out.push(format!("agent on {name}: unreadable status: {e}")),
            Some(Ok(agent)) => agent_pending(
                name,
                agent,
                &Needed {
                    now,
                    routes: needed,
                    services: services_needed,
                    policy: policy_needed,
                    lease_cidrs: &lease_cidrs,
                },
                &mut out,
            ),
        }
    }
    // Agents renew every third of the TTL: less than half left means renewals are missed.
    for kv in subnets.iter().filter(|kv| kv.lease != 0) {
        let (left, granted) = store.lease_ttl(kv.lease).await?;
        if granted > 0 && left * 2 < granted {
            let node = kv
                .decode::<LeaseAttrs>()
                .map(|a| a.node)
                .unwrap_or_default();
            out.push(format!(
                "lease of {} ({node}) expires in {left} s: its agent has not renewed it",
                keys::subnet_cidr(&kv.key).unwrap_or_default()
            ));
        }
    }
    let (deployments, _) = store.list(&keys::kind_prefix(Kind::Deployment)).await?;
    let (pods, _) = store.list(&keys::kind_prefix(Kind::Pod)).await?;
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
                    && lab::api::owned_by_deployment(p, name)
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
        let ready = lab::api::is_ready(p);
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

/// What every agent must have caught up with.
struct Needed<'a> {
    /// Unix time now, in seconds.
    now: i64,
    /// The newest lease or network config.
    routes: i64,
    /// The newest Service or EndpointSlice.
    services: i64,
    /// The newest Namespace, Pod or NetworkPolicy.
    policy: i64,
    /// Every leased pod CIDR.
    lease_cidrs: &'a BTreeSet<Ipv4Net>,
}

/// What one agent's status says is not done yet: stale, failing, behind the store, routes
/// missing or left over; its service proxy and policy enforcement behind or failing.
fn agent_pending(name: &str, agent: &AgentStatus, needed: &Needed<'_>, out: &mut Vec<String>) {
    let routes = &agent.routes;
    let heartbeat = i64::try_from(routes.heartbeat).unwrap_or(i64::MAX);
    if needed.now - heartbeat > AGENT_STALE_SECS {
        out.push(format!(
            "agent on {name} has not reported for {} s (is it running?)",
            needed.now - heartbeat
        ));
    }
    if let Some(err) = &routes.last_error {
        out.push(format!("agent on {name}: {err}"));
    }
    if !routes.healthy {
        out.push(format!("agent on {name} is not healthy"));
    }
    if routes.applied_revision < needed.routes {
        out.push(format!(
            "agent on {name} has applied revision {} but the leases are at {}",
            routes.applied_revision, needed.routes
        ));
    }
    let proxied = agent.proxy.applied_revision;
    if proxied < needed.services {
        out.push(format!(
            "service proxy on {name} has applied revision {proxied} but services are at {}",
            needed.services
        ));
    }
    if let Some(err) = &agent.proxy.last_error {
        out.push(format!("service proxy on {name}: {err}"));
    }
    let enforced = agent.policy.applied_revision;
    if enforced < needed.policy {
        out.push(format!(
            "network policy on {name} has applied revision {enforced} but pods, namespaces and policies are at {}",
            needed.policy
        ));
    }
    if let Some(err) = &agent.policy.last_error {
        out.push(format!("network policy on {name}: {err}"));
    }
    let applied: BTreeSet<Ipv4Net> = routes.peers.iter().copied().collect();
    let want: BTreeSet<Ipv4Net> = needed
        .lease_cidrs
        .iter()
        .filter(|c| **c != routes.cidr)
        .copied()
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

/// The lab's ingress gateway's part: every Ingress it serves (class `flatnet`, or no class)
/// shows the addresses the gateway publishes. Nothing to wait for when the gateway's Service
/// does not exist.
async fn ingress_pending(
    store: &impl Store,
    nodes: &[store::KeyValue],
    out: &mut Vec<String>,
) -> Result<(), StoreError> {
    use lab::topology::{INGRESS_GATEWAY, INGRESS_GATEWAY_NAMESPACE};
    let key = keys::object(
        Kind::Service,
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
    let class_key = keys::object(Kind::IngressClass, None, model::INGRESS_CLASS);
    let class: Option<model::IngressClass> =
        store.get(&class_key).await?.and_then(|kv| kv.decode().ok());
    let classless = model::IngressClass::serves_classless(class.as_ref(), true);
    let (ingresses, _) = store.list(&keys::kind_prefix(Kind::Ingress)).await?;
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
    let (services, _) = store.list(&keys::kind_prefix(Kind::Service)).await?;
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
    let (slices, _) = store.list(&keys::kind_prefix(Kind::EndpointSlice)).await?;
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
    let pool = lab::controller::lb_pool(store).await?;
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
            &keys::object(Kind::NetworkPolicy, Some("default"), "deny"),
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
            let kv = s.get(&keys::agent(a)).await.expect("get").expect("agent");
            let mut v: Value = kv.decode().expect("json");
            v["policy"] = json!({"appliedRevision": rev, "lastError": if a == "node1" { json!("nft: Operation not permitted") } else { Value::Null }});
            put(&s, &keys::agent(a), v).await;
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
            &keys::object(Kind::Service, Some("default"), "x"),
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
            let kv = s.get(&keys::agent(a)).await.expect("get").expect("agent");
            let mut v: Value = kv.decode().expect("json");
            v["proxy"] = json!({"appliedRevision": rev, "lastError": if a == "node2" { json!("nft: No such file or directory") } else { Value::Null }});
            put(&s, &keys::agent(a), v).await;
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
            &keys::object(Kind::Ingress, Some("default"), "web"),
            ing("web", "flatnet", &[]),
        )
        .await;
        put(
            &s,
            &keys::object(Kind::Ingress, Some("default"), "other"),
            ing("other", "nginx", &[]),
        )
        .await;
        // No gateway Service: nothing to wait for.
        assert_eq!(ingress_lines(&s).await, Vec::<String>::new());
        put(
            &s,
            &keys::object(Kind::Service, Some("kube-system"), "ingress-gateway"),
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
            &keys::object(Kind::Ingress, Some("default"), "web"),
            ing("web", "flatnet", &["172.20.0.240"]),
        )
        .await;
        assert_eq!(ingress_lines(&s).await, Vec::<String>::new());
        // A classless Ingress is the default class's: waited for while the stored class
        // `flatnet` is the default (or none is stored), not once it stops being it.
        let classless = json!({"metadata": {"name": "plain", "namespace": "default"},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        put(
            &s,
            &keys::object(Kind::Ingress, Some("default"), "plain"),
            classless,
        )
        .await;
        assert_eq!(ingress_lines(&s).await.len(), 1);
        let class = |default: &str| {
            json!({"metadata": {"name": "flatnet",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": default}},
            "spec": {"controller": "flatnet.io/ingress-gateway"}})
        };
        put(
            &s,
            &keys::object(Kind::IngressClass, None, "flatnet"),
            class("true"),
        )
        .await;
        assert_eq!(ingress_lines(&s).await.len(), 1);
        put(
            &s,
            &keys::object(Kind::IngressClass, None, "flatnet"),
            class("false"),
        )
        .await;
        assert_eq!(ingress_lines(&s).await, Vec::<String>::new());
    }

    /// A healthy agent's status as the agent writes it (every field of `AgentStatus`).
    fn agent(node: &str, cidr: &str, peers: &[&str], rev: i64) -> Value {
        json!({"node": node, "healthy": true, "appliedRevision": rev, "cidr": cidr,
               "backend": "host-gw", "underlayIP": "172.20.0.11", "mtu": 1500,
               "peers": peers, "heartbeat": now(), "lastError": null})
    }

    async fn two_node_cluster(s: &MemStore) {
        for (i, n) in ["node1", "node2"].iter().enumerate() {
            put(s, &keys::object(Kind::Node, None, n), json!({"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})).await;
            put(
                s,
                &keys::subnet(&format!("10.244.{i}.0/24")),
                json!({"node": n}),
            )
            .await;
        }
        let rev = s.revision().await.expect("rev");
        put(
            s,
            &keys::agent("node1"),
            agent("node1", "10.244.0.0/24", &["10.244.1.0/24"], rev),
        )
        .await;
        put(
            s,
            &keys::agent("node2"),
            agent("node2", "10.244.1.0/24", &["10.244.0.0/24"], rev),
        )
        .await;
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
        put(&s, &keys::subnet("10.244.2.0/24"), json!({"node": "node3"})).await;
        put(&s, &keys::agent("node2"), {
            let mut a = agent(
                "node2",
                "10.244.1.0/24",
                &["10.244.0.0/24", "10.244.9.0/24"],
                1,
            );
            a["healthy"] = json!(false);
            a["heartbeat"] = json!(now() - 60);
            a["lastError"] = json!("route 10.244.0.0/24: network unreachable");
            a
        })
        .await;
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
            &keys::object(Kind::Deployment, Some("default"), "web"),
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 2}}),
        )
        .await;
        put(&s, &keys::object(Kind::Pod, Some("default"), "web-a"), json!({"metadata": {"name": "web-a", "namespace": "default", "ownerReferences": [{"kind": "Deployment", "name": "web"}]}, "status": {"phase": "Pending"}})).await;
        put(&s, &keys::object(Kind::Pod, Some("default"), "done"), json!({"metadata": {"name": "done", "namespace": "default"}, "status": {"phase": "Succeeded"}})).await;
        let p = controller_only(pending(&s).await.expect("pending"));
        assert_eq!(
            p,
            vec![
                "deployment default/web has 1 of 2 pods".to_string(),
                "pod default/web-a is Pending".to_string()
            ]
        );
        put(&s, &keys::object(Kind::Pod, Some("default"), "web-b"), json!({"metadata": {"name": "web-b", "namespace": "default", "ownerReferences": [{"kind": "Deployment", "name": "web"}]}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})).await;
        put(&s, &keys::object(Kind::Pod, Some("default"), "web-a"), json!({"metadata": {"name": "web-a", "namespace": "default", "ownerReferences": [{"kind": "Deployment", "name": "web"}]}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})).await;
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
        put(
            &s,
            &keys::object(Kind::Service, Some("default"), "web"),
            svc.clone(),
        )
        .await;
        let pod = json!({"metadata": {"name": "web-a", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]}});
        put(
            &s,
            &keys::object(Kind::Pod, Some("default"), "web-a"),
            pod.clone(),
        )
        .await;
        assert_eq!(
            controller_only(pending(&s).await.expect("pending")),
            vec!["service default/web: endpointslices not up to date yet (controller)".to_string()]
        );
        let svc: Service = serde_json::from_value(svc).expect("svc");
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        let want = endpoints::desired_slices(&[svc], &[pod], &BTreeMap::new());
        assert_eq!(want.len(), 1);
        let key = keys::object(Kind::EndpointSlice, Some("default"), &want[0].metadata.name);
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
            &keys::object(Kind::EndpointSlice, Some("default"), "web-zzzzz"),
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
            keys::CONFIG,
            json!({"podCIDR": "10.244.0.0/16", "nodePrefixLength": 24, "backend": "host-gw", "loadBalancerPool": "172.20.0.240/28"}),
        )
        .await;
        let rev = s.revision().await.expect("rev");
        for a in ["node1", "node2"] {
            let kv = s.get(&keys::agent(a)).await.expect("get").expect("agent");
            let mut v: Value = kv.decode().expect("json");
            v["appliedRevision"] = json!(rev);
            put(&s, &keys::agent(a), v).await;
        }
        put(
            &s,
            &keys::object(Kind::Service, Some("default"), "lb"),
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
            &keys::object(Kind::Service, Some("default"), "lb"),
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
            &keys::object(Kind::Service, Some("default"), "lb"),
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

    #[tokio::test]
    async fn a_status_that_does_not_decode_is_pending_with_its_error() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        // An agent of another version that renamed a field.
        let mut a = agent("node2", "10.244.1.0/24", &["10.244.0.0/24"], 0);
        let rev = a["appliedRevision"].take();
        a.as_object_mut().map(|m| m.remove("appliedRevision"));
        a["applied"] = rev;
        put(&s, &keys::agent("node2"), a).await;
        let p = pending(&s).await.expect("pending");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("agent on node2: unreadable status: ")
                && p[0].contains("agents/node2")
                && p[0].contains("appliedRevision"),
            "{p:?}"
        );
    }

    #[tokio::test]
    async fn a_full_load_balancer_pool_is_a_note_not_pending() {
        let s = MemStore::new();
        two_node_cluster(&s).await;
        // The pool holds two addresses; three LoadBalancers as the controller leaves them.
        put(
            &s,
            keys::CONFIG,
            json!({"podCIDR": "10.244.0.0/16", "nodePrefixLength": 24, "backend": "host-gw", "loadBalancerPool": "172.20.0.240/31"}),
        )
        .await;
        let rev = s.revision().await.expect("rev");
        for (node, cidr, peer) in [
            ("node1", "10.244.0.0/24", "10.244.1.0/24"),
            ("node2", "10.244.1.0/24", "10.244.0.0/24"),
        ] {
            put(&s, &keys::agent(node), agent(node, cidr, &[peer], rev)).await;
        }
        let lb = |name: &str, ip: Option<&str>| {
            let status = match ip {
                Some(ip) => json!({"loadBalancer": {"ingress": [{"ip": ip}]}}),
                None => json!({"loadBalancer": {}}),
            };
            json!({"metadata": {"name": name, "namespace": "default"},
                   "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "ports": [{"port": 80}]},
                   "status": status})
        };
        let key = |name: &str| keys::object(Kind::Service, Some("default"), name);
        put(&s, &key("a"), lb("a", Some("172.20.0.240"))).await;
        put(&s, &key("bb"), lb("bb", Some("172.20.0.241"))).await;
        put(&s, &key("ccc"), lb("ccc", None)).await;
        let r = report(&s).await.expect("report");
        let controller = controller_only(r.pending);
        assert!(
            controller.iter().all(|p| !p.contains("LoadBalancer")),
            "{controller:?}"
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("service default/ccc: LoadBalancer address pending")),
            "{:?}",
            r.notes
        );
        // bb deleted and its address taken by ccc: nothing left to note.
        s.delete(&key("bb")).await.expect("delete");
        put(&s, &key("ccc"), lb("ccc", Some("172.20.0.241"))).await;
        let r = report(&s).await.expect("report");
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }
}
