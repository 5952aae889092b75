//! Response bodies (pure): objects and lists with `resourceVersion` = etcd mod revision,
//! `Status` errors with the code and reason Kubernetes clients look at.

use model::Kind;
use serde_json::{Value, json};

use crate::api::{ApiError, Listed};

/// One object as served: `metadata.resourceVersion` is the revision of its last write.
pub fn object(mut v: Value, mod_revision: i64) -> Value {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"]["resourceVersion"] = json!(mod_revision.to_string());
    v
}

/// A list of one kind (`PodList`, `DeploymentList`, ... in the kind's group version), its
/// `metadata.resourceVersion` the revision it was read at, each item stamped by [`object`].
/// `items` is `[]` when empty, never null (the python client requires it).
pub fn list(kind: Kind, listed: Listed) -> Value {
    let items: Vec<Value> = listed
        .items
        .into_iter()
        .map(|(v, rev)| object(v, rev))
        .collect();
    json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.as_str()),
        "metadata": {"resourceVersion": listed.revision.to_string()},
        "items": items,
    })
}

/// Whether an `Accept` header asks for a `meta.k8s.io` Table (`kubectl get` does, with plain
/// JSON as its fallback).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// A `meta.k8s.io/v1` Table of objects: the columns of [`crate::columns::row`] (the `-o wide`
/// ones at priority 1), each row's cells and its object as `PartialObjectMetadata` (kubectl
/// takes NAMESPACE and `--show-labels` from it). `revision`: the list's resourceVersion.
pub fn table(kind: Kind, items: Vec<(Value, i64)>, revision: Option<i64>) -> Value {
    let sample = items.first().map(|(v, _)| v.clone()).unwrap_or(json!({}));
    let (narrow, _) = crate::columns::row(kind, &sample, false);
    let (wide, _) = crate::columns::row(kind, &sample, true);
    let columns: Vec<Value> = wide
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "name": name,
                "type": "string",
                "format": if *name == "NAME" { "name" } else { "" },
                "description": "",
                "priority": if i < narrow.len() { 0 } else { 1 },
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .into_iter()
        .map(|(v, rev)| {
            let (_, cells) = crate::columns::row(kind, &v, true);
            let meta = object(v, rev)["metadata"].clone();
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                },
            })
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    });
    if let Some(rev) = revision {
        t["metadata"]["resourceVersion"] = json!(rev.to_string());
    }
    t
}

/// The `DeleteOptions` of a DELETE body (empty: defaults): `gracePeriodSeconds`; the
/// propagation policy is the registry's own (dependents go in the background).
pub fn delete_options(body: &[u8]) -> Result<crate::api::DeleteOptions, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(crate::api::DeleteOptions::default());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("DeleteOptions body: {e}"))?;
    let grace_period = match v.get("gracePeriodSeconds") {
        None | Some(Value::Null) => None,
        Some(g) => Some(g.as_i64().ok_or_else(|| {
            format!("DeleteOptions body: gracePeriodSeconds {g} is not an integer")
        })?),
    };
    Ok(crate::api::DeleteOptions { grace_period })
}

/// The `Status` a delete answers with when the object is gone at once.
pub fn deleted(kind: Kind, name: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": kind.plural()},
    })
}

/// A `Status` failure: `code` is also the HTTP status.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

/// A failure about one object, worded as kube-apiserver does: `pods "web" not found`.
fn about(code: u16, reason: &str, kind: &str, name: &str, what: &str) -> (u16, Value) {
    let plural = Kind::from_kind_field(kind)
        .map(|k| k.plural())
        .unwrap_or(kind);
    (
        code,
        status(
            code,
            reason,
            &format!("{plural} \"{name}\" {what}"),
            Some(json!({"name": name, "kind": plural})),
        ),
    )
}

/// The `Status` (and HTTP code) for a registry error: 404 NotFound and 409 AlreadyExists
/// naming the object as kube-apiserver does (`pods "web" not found`), 422 Invalid for what the
/// registry refused, 503 when etcd does not answer, 500 otherwise.
pub fn api_error(e: &ApiError) -> (u16, Value) {
    match e {
        ApiError::NotFound { kind, name, .. } => about(404, "NotFound", kind, name, "not found"),
        ApiError::AlreadyExists { kind, name, .. } => {
            about(409, "AlreadyExists", kind, name, "already exists")
        }
        // Refused by the registry's validation or allocation (a missing namespace, a taken
        // clusterIP): nothing was written.
        ApiError::Invalid(m) => (422, status(422, "Invalid", m, None)),
        ApiError::Store(store::StoreError::Unavailable(_)) => {
            (503, status(503, "ServiceUnavailable", &e.to_string(), None))
        }
        _ => (500, status(500, "InternalError", &e.to_string(), None)),
    }
}

/// One watch event as a line of the stream: `{"type": ..., "object": ...}` and a newline.
pub fn watch_event(event_type: &str, object: &Value) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The object a DELETED event carries when only the key is known (the store's delete event has
/// no previous value yet): kind, name, namespace and the deletion's revision, read from the key
/// `objects/<plural>/<namespace or _>/<name>`.
pub fn deleted_object(kind: Kind, key: &str, revision: i64) -> Value {
    let mut parts = key.rsplitn(3, '/');
    let name = parts.next().unwrap_or_default();
    let ns = parts.next().filter(|n| *n != "_" && kind.namespaced());
    let mut meta = json!({"name": name, "resourceVersion": revision.to_string()});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": kind.api_version(), "kind": kind.as_str(), "metadata": meta})
}

/// The in-stream ERROR a watch ends with when its start revision was compacted away (clients
/// relist on it, as kube-apiserver's `too old resource version`).
pub fn expired(requested: i64, oldest: i64) -> Value {
    status(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest})"),
        None,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn lists_carry_the_read_revision_and_each_items_mod_revision() {
        let listed = Listed {
            items: vec![
                (json!({"kind": "Pod", "metadata": {"name": "a"}}), 7),
                (
                    json!({"kind": "Pod", "metadata": {"name": "b", "resourceVersion": "1"}}),
                    9,
                ),
            ],
            revision: 12,
        };
        let l = list(Kind::Pod, listed);
        assert_eq!(l["apiVersion"], "v1");
        assert_eq!(l["kind"], "PodList");
        assert_eq!(l["metadata"]["resourceVersion"], "12");
        assert_eq!(l["items"][0]["metadata"]["resourceVersion"], "7");
        // whatever was stored, the served RV is the store's
        assert_eq!(l["items"][1]["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn watch_events_are_json_lines_and_deletes_name_their_object() {
        let line = watch_event("ADDED", &json!({"kind": "Pod"}));
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v, json!({"type": "ADDED", "object": {"kind": "Pod"}}));
        let d = deleted_object(Kind::Pod, "objects/pods/shop/web", 42);
        assert_eq!(
            d,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42"}})
        );
        let n = deleted_object(Kind::Node, "objects/nodes/_/node1", 7);
        assert_eq!(
            n["metadata"],
            json!({"name": "node1", "resourceVersion": "7"})
        );
        let e = expired(5, 9);
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert_eq!(e["message"], "too old resource version: 5 (9)");
    }

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(""));
        assert!(!wants_table(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
    }

    #[test]
    fn tables_carry_flatnets_columns_wide_ones_at_priority_one() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5"}});
        let t = table(Kind::Pod, vec![(pod, 17)], Some(20));
        assert_eq!(
            (t["kind"].as_str(), t["apiVersion"].as_str()),
            (Some("Table"), Some("meta.k8s.io/v1"))
        );
        assert_eq!(t["metadata"]["resourceVersion"], "20");
        let cols: Vec<(&str, u64)> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            cols,
            [
                ("NAME", 0),
                ("READY", 0),
                ("STATUS", 0),
                ("IP", 0),
                ("NODE", 0),
                ("AGE", 0),
                ("LABELS", 1)
            ]
        );
        let row = &t["rows"][0];
        assert_eq!(
            row["cells"].as_array().unwrap()[..5],
            json!(["web", "0/1", "Running", "10.244.0.5", "node1"])
                .as_array()
                .unwrap()[..]
        );
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["namespace"], "shop");
        assert_eq!(row["object"]["metadata"]["resourceVersion"], "17");
        // an empty list still has its columns
        let empty = table(Kind::Service, vec![], Some(3));
        assert_eq!(empty["columnDefinitions"][1]["name"], "TYPE");
        assert_eq!(empty["rows"], json!([]));
    }

    #[test]
    fn delete_bodies_give_the_grace_period() {
        assert_eq!(delete_options(b"").unwrap().grace_period, None);
        let o = delete_options(br#"{"propagationPolicy":"Background"}"#).unwrap();
        assert_eq!(o.grace_period, None);
        let o = delete_options(br#"{"gracePeriodSeconds":0,"propagationPolicy":"Background"}"#)
            .unwrap();
        assert_eq!(o.grace_period, Some(0));
        assert!(delete_options(b"{").is_err());
        assert!(delete_options(br#"{"gracePeriodSeconds":"x"}"#).is_err());
    }

    #[test]
    fn empty_lists_have_empty_items_and_their_groups_version() {
        let l = list(Kind::Deployment, Listed::default());
        assert_eq!(l["apiVersion"], "apps/v1");
        assert_eq!(l["kind"], "DeploymentList");
        assert_eq!(l["items"], json!([]));
    }

    #[test]
    fn not_found_is_a_status_naming_resource_and_name() {
        let e = ApiError::NotFound {
            kind: "Pod".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        };
        let (code, s) = api_error(&e);
        assert_eq!(code, 404);
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["message"], "pods \"web\" not found");
        assert_eq!(s["details"], json!({"name": "web", "kind": "pods"}));
        let (code, s) = api_error(&ApiError::Store(store::StoreError::Unavailable(
            "etcd down".into(),
        )));
        assert_eq!(
            (code, s["reason"].as_str().unwrap()),
            (503, "ServiceUnavailable")
        );
    }
}
