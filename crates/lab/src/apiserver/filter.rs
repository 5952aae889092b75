//! Which objects a list or watch returns (pure): `labelSelector` through
//! [`model::LabelSelector`], `fieldSelector` over the fields kube-apiserver indexes for the kind
//! (`metadata.name` and `metadata.namespace` everywhere; a pod's `spec.nodeName`,
//! `status.phase` and `status.podIP`). kubectl `wait` and `delete` select by `metadata.name`.

use std::collections::BTreeMap;

use model::Kind;
use serde_json::Value;

/// One `fieldSelector` term: `field=value`, `field==value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field as a JSON pointer (`/metadata/name`).
    pub pointer: &'static str,
    /// `=`/`==` (true) or `!=` (false).
    pub equal: bool,
    /// The value compared with (a missing field is "").
    pub value: String,
}

/// A request's selectors together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `labelSelector`.
    pub labels: model::LabelSelector,
    /// `fieldSelector`, every term must hold.
    pub fields: Vec<FieldRequirement>,
}

/// Where a selectable field of `kind` is, as kube-apiserver's field label conversion allows.
fn field_pointer(kind: Kind, field: &str) -> Option<&'static str> {
    match (kind, field) {
        (_, "metadata.name") => Some("/metadata/name"),
        (_, "metadata.namespace") => Some("/metadata/namespace"),
        (Kind::Pod, "spec.nodeName") => Some("/spec/nodeName"),
        (Kind::Pod, "status.phase") => Some("/status/phase"),
        (Kind::Pod, "status.podIP") => Some("/status/podIP"),
        _ => None,
    }
}

impl Filter {
    /// Parses both selectors; the message names what is wrong (a 400 BadRequest).
    pub fn parse(kind: Kind, labels: Option<&str>, fields: Option<&str>) -> Result<Filter, String> {
        let labels = match labels {
            Some(s) => model::LabelSelector::parse(s).map_err(|e| e.to_string())?,
            None => model::LabelSelector::default(),
        };
        let mut out = Vec::new();
        for term in fields
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid field selector {term:?}: expected FIELD=VALUE or FIELD!=VALUE"
                ));
            };
            let field = field.trim();
            let pointer = field_pointer(kind, field).ok_or_else(|| {
                format!("field label not supported: {field} (for {})", kind.plural())
            })?;
            out.push(FieldRequirement {
                pointer,
                equal,
                value: value.trim().to_string(),
            });
        }
        Ok(Filter {
            labels,
            fields: out,
        })
    }

    /// Whether the object is selected.
    pub fn matches(&self, v: &Value) -> bool {
        let labels: BTreeMap<String, String> = crate::api::labels_of(v).into_iter().collect();
        self.labels.matches(&labels)
            && self.fields.iter().all(|f| {
                let got = v.pointer(f.pointer).and_then(Value::as_str).unwrap_or("");
                (got == f.value) == f.equal
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_and_label_selectors_both_hold() {
        let web = json!({"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                         "spec": {"nodeName": "node1"}, "status": {"phase": "Running"}});
        let f = |l: Option<&str>, s: &str| {
            Filter::parse(Kind::Pod, l, Some(s)).unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        assert!(f(None, "metadata.name=web").matches(&web));
        assert!(f(None, "metadata.name==web,metadata.namespace=shop").matches(&web));
        assert!(!f(None, "metadata.name!=web").matches(&web));
        assert!(f(None, "spec.nodeName=node1,status.phase!=Failed").matches(&web));
        assert!(!f(Some("app=db"), "metadata.name=web").matches(&web));
        assert!(f(Some("app=web"), "").matches(&web));
        // a missing field is the empty string
        assert!(f(None, "status.podIP=").matches(&web));
    }

    #[test]
    fn unsupported_fields_and_bad_terms_are_refused() {
        let e = Filter::parse(Kind::Service, None, Some("spec.nodeName=a")).expect_err("pods only");
        assert!(
            e.contains("field label not supported: spec.nodeName"),
            "{e}"
        );
        assert!(Filter::parse(Kind::Pod, None, Some("metadata.name")).is_err());
        assert!(Filter::parse(Kind::Pod, Some("a in ("), None).is_err());
    }
}
