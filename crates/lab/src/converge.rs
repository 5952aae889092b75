//! Is the cluster converged on the store? Read by `flatnet wait --converged` and `flatnet
//! status`: nodes registered and Ready, every agent applied the subnet leases and config as
//! they are now (so at least as they were when the caller started), Deployments expanded,
//! pods Ready or failed.

use std::collections::BTreeSet;

use serde_json::Value;
use store::{Store, StoreError};

/// An agent that has not reported for this long is considered down.
pub const AGENT_STALE_SECS: i64 = 20;

/// What is not converged yet, in plain words; empty when converged.
pub async fn pending(store: &impl Store) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (nodes, _) = store
        .list(&store::keys::object_kind_prefix("nodes"))
        .await?;
    let (subnets, _) = store.list(store::keys::SUBNETS).await?;
    let config = store.get(store::keys::CONFIG).await?;
    let (agents, _) = store.list(store::keys::AGENTS).await?;
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
    let (deployments, _) = store
        .list(&store::keys::object_kind_prefix("deployments"))
        .await?;
    let (pods, _) = store.list(&store::keys::object_kind_prefix("pods")).await?;
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
    Ok(out)
}
