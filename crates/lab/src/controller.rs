//! The controller-manager part of the lab: keeps every Deployment's pods at its replica
//! count, replacing pods that are deleted. One process per lab.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use store::{Store, WatchEvent};

use crate::api;
use crate::names::Lab;
use crate::topology::LabError;

const OBJECTS: &str = "objects/";

/// The namespace/name of the Deployment an object key concerns: the Deployment itself, or
/// the owner of a pod.
fn deployment_of(key: &str, value: Option<&Value>) -> Option<(String, String)> {
    let rest = key.strip_prefix(OBJECTS)?;
    let mut parts = rest.splitn(3, '/');
    let (kind, ns, name) = (parts.next()?, parts.next()?, parts.next()?);
    match kind {
        "deployments" => Some((ns.to_string(), name.to_string())),
        "pods" => {
            let owner = value?
                .pointer("/metadata/ownerReferences")?
                .as_array()?
                .iter()
                .find(|o| o["kind"] == "Deployment")?;
            Some((ns.to_string(), owner["name"].as_str()?.to_string()))
        }
        _ => None,
    }
}

pub async fn run(lab: Lab) -> Result<(), LabError> {
    let store = loop {
        match crate::client::connect(&lab).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("store not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    // Owners of deleted pods are remembered from the last value seen.
    let mut owners: std::collections::HashMap<String, (String, String)> = Default::default();
    loop {
        let (kvs, rev) = match store.list(OBJECTS).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("list: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut todo = BTreeSet::new();
        for kv in &kvs {
            let v: Option<Value> = kv.decode().ok();
            if let Some(d) = deployment_of(&kv.key, v.as_ref()) {
                if kv.key.starts_with("objects/pods/") {
                    owners.insert(kv.key.clone(), d.clone());
                }
                todo.insert(d);
            }
        }
        for (ns, name) in &todo {
            if let Err(e) = api::reconcile_deployment(&store, ns, name).await {
                tracing::warn!(deployment = %format!("{ns}/{name}"), "reconcile: {e}");
            }
        }
        let mut watch = match store.watch(OBJECTS, rev + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("watch: {e}; relisting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = watch.recv().await {
            let d = match ev {
                Ok(WatchEvent::Put(kv)) => {
                    let v: Option<Value> = kv.decode().ok();
                    let d = deployment_of(&kv.key, v.as_ref());
                    if let (Some(d), true) = (&d, kv.key.starts_with("objects/pods/")) {
                        owners.insert(kv.key.clone(), d.clone());
                    }
                    d
                }
                Ok(WatchEvent::Delete { key, .. }) => {
                    owners.remove(&key).or_else(|| deployment_of(&key, None))
                }
                Err(e) => {
                    tracing::warn!("watch ended: {e}; relisting");
                    break;
                }
            };
            if let Some((ns, name)) = d
                && let Err(e) = api::reconcile_deployment(&store, &ns, &name).await
            {
                tracing::warn!(deployment = %format!("{ns}/{name}"), "reconcile: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
}
