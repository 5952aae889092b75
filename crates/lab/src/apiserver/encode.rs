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

/// The `Status` (and HTTP code) for a registry error: 404 NotFound naming the object as
/// kube-apiserver does (`pods "web" not found`), 503 when etcd does not answer, 500 otherwise.
pub fn api_error(e: &ApiError) -> (u16, Value) {
    match e {
        ApiError::NotFound { kind, name, .. } => {
            let plural = Kind::from_kind_field(kind)
                .map(|k| k.plural())
                .unwrap_or(kind.as_str());
            (
                404,
                status(
                    404,
                    "NotFound",
                    &format!("{plural} \"{name}\" not found"),
                    Some(json!({"name": name, "kind": plural})),
                ),
            )
        }
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
