//! [`Object`]: one object as stored (its kind and full JSON), plus Kubernetes-shaped output.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ModelError;
use crate::kind::Kind;
use crate::meta::ObjectMeta;

/// One object: its kind and its full JSON (`apiVersion`, `kind`, `metadata`, ...).
///
/// Objects from [`crate::parse_manifests`] are validated and have `metadata.namespace` set
/// for namespaced kinds (defaulted to `default`) and absent for cluster-scoped ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// The kind, matching the JSON's `kind` field.
    pub kind: Kind,
    /// The whole object as written; typed views are read from it on demand.
    pub value: Value,
}

impl Object {
    /// Wraps a JSON object read back from the store, taking the kind from its `kind` field.
    /// Does not validate.
    pub fn from_json(value: Value) -> Result<Object, ModelError> {
        let kind_field = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let kind = Kind::from_kind_field(kind_field)
            .ok_or_else(|| ModelError::Type(format!("unknown kind {kind_field:?}")))?;
        if !value.is_object() {
            return Err(ModelError::Type("an object must be a JSON object".into()));
        }
        Ok(Object { kind, value })
    }

    /// Serializes a typed view (`Pod`, `Service`, ...) and sets `apiVersion` and `kind`.
    /// A namespaced object without `metadata.namespace` gets `default`.
    pub fn from_typed<T: Serialize>(kind: Kind, t: &T) -> Result<Object, ModelError> {
        let mut value = serde_json::to_value(t)
            .map_err(|e| ModelError::Type(format!("cannot serialize {kind}: {e}")))?;
        let Some(map) = value.as_object_mut() else {
            return Err(ModelError::Type(format!(
                "{kind} did not serialize to an object"
            )));
        };
        map.insert("apiVersion".into(), Value::from(kind.api_version()));
        map.insert("kind".into(), Value::from(kind.as_str()));
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut()
            && kind.namespaced()
            && !meta.get("namespace").is_some_and(Value::is_string)
        {
            meta.insert("namespace".into(), Value::from("default"));
        }
        Ok(Object { kind, value })
    }

    fn metadata(&self) -> Option<&Map<String, Value>> {
        self.value.get("metadata").and_then(Value::as_object)
    }

    /// `metadata.name` (empty if missing, which a validated object never is).
    pub fn name(&self) -> &str {
        self.metadata()
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `metadata.namespace`, `default` if absent; `None` for cluster-scoped kinds.
    pub fn namespace(&self) -> Option<&str> {
        if !self.kind.namespaced() {
            return None;
        }
        Some(
            self.metadata()
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("default"),
        )
    }

    /// `metadata.labels` (entries that are not strings are skipped).
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.metadata()
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The typed metadata. A malformed `metadata` (never the case after validation) gives
    /// the name, namespace and labels that could be read.
    pub fn meta(&self) -> ObjectMeta {
        self.value
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_else(|| ObjectMeta {
                name: self.name().to_string(),
                namespace: self.namespace().map(str::to_string),
                labels: self.labels(),
                ..ObjectMeta::default()
            })
    }

    /// Reads the object as a typed view (`Pod`, `Service`, ...). Succeeds for every validated
    /// object of the matching kind.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, ModelError> {
        T::deserialize(&self.value).map_err(|e| {
            ModelError::Type(format!(
                "cannot read {} {}: {e}",
                self.kind,
                self.display_name()
            ))
        })
    }

    /// Store key relative to the store prefix: `objects/<plural>/<namespace or _>/<name>`.
    pub fn key(&self) -> String {
        object_key(self.kind, self.namespace(), self.name())
    }

    /// `namespace/name`, or `name` for cluster-scoped kinds (for messages and spans).
    pub fn display_name(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name()),
            None => self.name().to_string(),
        }
    }
}

/// Store key relative to the store prefix: `objects/<plural>/<namespace or _>/<name>`.
/// Cluster-scoped kinds use `_` whatever `namespace` says.
pub fn object_key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    let ns = if kind.namespaced() {
        namespace.unwrap_or("default")
    } else {
        "_"
    };
    format!("objects/{}/{ns}/{name}", kind.plural())
}

/// Kubernetes list output, as `kubectl get -o json` prints it:
/// `{"apiVersion":"v1","items":[...],"kind":"List","metadata":{"resourceVersion":""}}`.
pub fn list_json(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    })
}

/// Renders a value as YAML (block style, strings quoted where YAML would read them as
/// something else), for `-o yaml`.
pub fn to_yaml(v: &Value) -> String {
    match serde_saphyr::to_string(v) {
        Ok(s) => s,
        // JSON is YAML; serializing a serde_json::Value has no failure mode we know of.
        Err(_) => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_plural_namespace_and_underscore_for_cluster_scope() {
        assert_eq!(object_key(Kind::Pod, Some("x"), "a"), "objects/pods/x/a");
        assert_eq!(object_key(Kind::Pod, None, "a"), "objects/pods/default/a");
        assert_eq!(
            object_key(Kind::Namespace, Some("x"), "x"),
            "objects/namespaces/_/x"
        );
        assert_eq!(object_key(Kind::Node, None, "n1"), "objects/nodes/_/n1");
    }

    #[test]
    fn from_typed_sets_api_version_kind_and_default_namespace() {
        let pod = crate::Pod {
            metadata: ObjectMeta {
                name: "web".into(),
                ..ObjectMeta::default()
            },
            ..crate::Pod::default()
        };
        let obj = Object::from_typed(Kind::Pod, &pod).expect("serializes");
        assert_eq!(obj.value["apiVersion"], "v1");
        assert_eq!(obj.value["kind"], "Pod");
        assert_eq!(obj.namespace(), Some("default"));
        assert_eq!(obj.key(), "objects/pods/default/web");
        let back: crate::Pod = obj.typed().expect("reads back");
        assert_eq!(back.metadata.name, "web");

        let ns = crate::Namespace {
            metadata: ObjectMeta {
                name: "x".into(),
                ..ObjectMeta::default()
            },
            ..crate::Namespace::default()
        };
        let obj = Object::from_typed(Kind::Namespace, &ns).expect("serializes");
        assert_eq!(obj.namespace(), None);
        assert!(obj.value["metadata"].get("namespace").is_none());
    }

    #[test]
    fn from_json_takes_the_kind_field() {
        let obj = Object::from_json(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "x"}}))
        .expect("known kind");
        assert_eq!(obj.kind, Kind::Deployment);
        assert_eq!(obj.display_name(), "x/d");
        assert!(Object::from_json(json!({"kind": "ConfigMap"})).is_err());
    }

    #[test]
    fn list_json_is_a_v1_list() {
        let l = list_json(vec![json!({"a": 1})]);
        assert_eq!(
            l,
            json!({"apiVersion": "v1", "kind": "List", "items": [{"a": 1}],
                "metadata": {"resourceVersion": ""}})
        );
    }
}
