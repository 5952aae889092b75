//! Reading manifests: documents out of YAML or JSON text, `List` expansion, the defaults the
//! API server applies on create, and validation.

use serde_json::{Map, Value};

use crate::error::{DocumentError, FieldError, ModelError};
use crate::kind::Kind;
use crate::object::Object;
use crate::secret::base64_encode;
use crate::validate::check;

/// One non-empty document of a source.
struct Doc {
    /// 1-based among the non-empty documents.
    index: usize,
    value: Value,
}

/// Parses a multi-document YAML or JSON text into validated objects.
///
/// Documents are separated by `---` (YAML) or simply follow each other (JSON); empty
/// documents are skipped; a `List` (or `<Kind>List`) with `items` is expanded. Each object
/// gets the API server's create-time treatment: `metadata.namespace` defaults to `default`
/// (and is dropped for cluster-scoped kinds), `status` is dropped, a Namespace gets the
/// `kubernetes.io/metadata.name` label, a Secret's `stringData` is merged into `data`.
///
/// All-or-nothing: the first invalid document fails the call; its error names `source`, the
/// document's 1-based index, the kind and name when known, and every bad field with its value.
pub fn parse_manifests(text: &str, source: &str) -> Result<Vec<Object>, ModelError> {
    each_document(text, source, |v| to_object(v.clone()))
}

/// `read` applied to each document of a source, and to each item of a `List` document; the
/// first failure names the source, the document and the item.
fn each_document<T>(
    text: &str,
    source: &str,
    read: impl Fn(&Value) -> Result<T, DocumentError>,
) -> Result<Vec<T>, ModelError> {
    let mut out = Vec::new();
    for doc in documents(text, source)? {
        let invalid = |item: Option<usize>| {
            move |reason| ModelError::Invalid {
                source_name: source.to_string(),
                doc: doc.index,
                item,
                reason: Box::new(reason),
            }
        };
        match list_items(&doc.value) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    out.push(read(item).map_err(invalid(Some(i)))?);
                }
            }
            None => out.push(read(&doc.value).map_err(invalid(None))?),
        }
    }
    Ok(out)
}

/// The `items` of a `List`/`*List` document, if it is one.
fn list_items(v: &Value) -> Option<&Vec<Value>> {
    let kind = v.get("kind")?.as_str()?;
    if kind == "List" || (kind.ends_with("List") && Kind::from_kind_field(kind).is_none()) {
        return v.get("items")?.as_array();
    }
    None
}

/// The identity of an object in a manifest: what `kubectl delete -f` needs of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The document's `kind`.
    pub kind: Kind,
    /// `metadata.namespace` of a namespaced kind, `None` when the document does not say
    /// (the caller's namespace applies); always `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

/// Reads only `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` of each document
/// (and of each item of a `List`), as `kubectl delete -f` does: a stub, or an object whose
/// spec is outdated or invalid, still names what to delete. Any kind flatnet knows is accepted.
pub fn parse_object_refs(text: &str, source: &str) -> Result<Vec<ObjectRef>, ModelError> {
    each_document(text, source, object_ref)
}

fn object_ref(value: &Value) -> Result<ObjectRef, DocumentError> {
    let (kind, root) = kind_and_version(value, |_| true)?;
    let meta = root.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f));
    let fail = |name: Option<&str>, field| DocumentError::Identity {
        kind: kind.as_str().to_string(),
        name: name.map(str::to_string),
        field,
    };
    let name = match field("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        None | Some(Value::Null | Value::String(_)) => {
            return Err(fail(
                None,
                FieldError::Required {
                    field: "metadata.name",
                },
            ));
        }
        Some(v) => {
            return Err(fail(
                None,
                FieldError::NotAString {
                    field: "metadata.name",
                    value: v.clone(),
                },
            ));
        }
    };
    let namespace = match field("namespace") {
        _ if !kind.namespaced() => None,
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.is_empty() => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(v) => {
            return Err(fail(
                Some(&name),
                FieldError::NotAString {
                    field: "metadata.namespace",
                    value: v.clone(),
                },
            ));
        }
    };
    Ok(ObjectRef {
        kind,
        namespace,
        name,
    })
}

/// Checks that a document is a mapping whose `kind` is known (and passes `accept`) and whose
/// `apiVersion` is that kind's.
fn kind_and_version(
    value: &Value,
    accept: fn(&Kind) -> bool,
) -> Result<(Kind, &Map<String, Value>), DocumentError> {
    let Value::Object(root) = value else {
        return Err(DocumentError::NotAMapping {
            value: value.clone(),
        });
    };
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let kind_name = root.get("kind").and_then(Value::as_str).unwrap_or("object");
    let fail = |field| DocumentError::Identity {
        kind: kind_name.to_string(),
        name: name.map(str::to_string),
        field,
    };
    let kind = match root.get("kind") {
        None | Some(Value::Null) => return Err(fail(FieldError::Required { field: "kind" })),
        Some(Value::String(k)) => match Kind::from_kind_field(k).filter(accept) {
            Some(kind) => kind,
            None => {
                return Err(fail(FieldError::UnsupportedKind {
                    kind: k.clone(),
                    supported: Kind::ALL.into_iter().filter(accept).collect(),
                }));
            }
        },
        Some(other) => {
            return Err(fail(FieldError::NotAString {
                field: "kind",
                value: other.clone(),
            }));
        }
    };
    match root.get("apiVersion") {
        Some(Value::String(v)) if v == kind.api_version() => Ok((kind, root)),
        None | Some(Value::Null) => Err(fail(FieldError::Required {
            field: "apiVersion",
        })),
        Some(v) => Err(fail(FieldError::UnsupportedApiVersion {
            value: v.clone(),
            expected: kind.api_version(),
        })),
    }
}

/// Checks kind and apiVersion, applies create-time defaults, validates.
fn to_object(mut value: Value) -> Result<Object, DocumentError> {
    let (kind, _) = kind_and_version(&value, Kind::appliable)?;
    strip_nulls(&mut value);
    if let Value::Object(root) = &mut value {
        apply_create_defaults(kind, root);
    }
    let obj = Object { kind, value };
    let errors = check(&obj);
    if errors.is_empty() {
        Ok(obj)
    } else {
        Err(DocumentError::Invalid {
            kind,
            name: obj.display_name(),
            errors,
        })
    }
}

/// Drops `key: null` entries at every level. Go decodes a null field as its zero value and
/// writes it back omitted, so the stored object never has them; neither do ours, and typed
/// views need not treat `labels: null` and a missing `labels` differently.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// What the API server does to an object it is asked to create, as far as flatnet cares.
fn apply_create_defaults(kind: Kind, root: &mut Map<String, Value>) {
    root.remove("status");
    if let Some(Value::Object(meta)) = root.get_mut("metadata") {
        if kind.namespaced() {
            if matches!(meta.get("namespace"), None | Some(Value::Null))
                || meta.get("namespace").and_then(Value::as_str) == Some("")
            {
                meta.insert("namespace".into(), Value::from("default"));
            }
        } else {
            meta.remove("namespace");
        }
        if kind == Kind::Namespace
            && let Some(name) = meta.get("name").and_then(Value::as_str).map(str::to_string)
        {
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if labels.is_null() {
                *labels = Value::Object(Map::new());
            }
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), Value::from(name));
            }
        }
    }
    if kind == Kind::Secret {
        merge_string_data(root);
    }
}

/// Moves `stringData` into `data` (base64), overwriting, as the API server does on write.
/// Left untouched when some value is not a string, so that validation reports it.
fn merge_string_data(root: &mut Map<String, Value>) {
    let Some(Value::Object(sd)) = root.get("stringData") else {
        if root.get("stringData").is_some_and(Value::is_null) {
            root.remove("stringData");
        }
        return;
    };
    if !sd.values().all(Value::is_string) {
        return;
    }
    let sd = sd.clone();
    let data = root
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if data.is_null() {
        *data = Value::Object(Map::new());
    }
    let Some(data) = data.as_object_mut() else {
        return;
    };
    for (k, v) in sd {
        let encoded = base64_encode(v.as_str().unwrap_or_default().as_bytes());
        data.insert(k, Value::from(encoded));
    }
    root.remove("stringData");
}

/// The non-empty documents of a source, JSON or YAML.
fn documents(text: &str, source: &str) -> Result<Vec<Doc>, ModelError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with(['{', '[']) {
        match json_documents(text, source) {
            Ok(docs) => return Ok(docs),
            // `{a: 1}` is YAML flow syntax, not JSON; report the JSON error only if YAML
            // cannot read it either.
            Err(json_err) => return yaml_documents(text, source).map_err(|_| json_err),
        }
    }
    yaml_documents(text, source)
}

/// A stream of JSON values, one document each (as `kubectl apply` reads JSON).
fn json_documents(text: &str, source: &str) -> Result<Vec<Doc>, ModelError> {
    let mut docs = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value {
            Ok(value) => docs.push(Doc {
                index: docs.len() + 1,
                value,
            }),
            Err(e) => {
                return Err(ModelError::Parse {
                    source_name: source.to_string(),
                    doc: docs.len() + 1,
                    line: e.line(),
                    msg: format!(
                        "invalid JSON at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                });
            }
        }
    }
    Ok(docs)
}

/// YAML documents. The text is split at document markers first (a `---` or `...` line can
/// never be content, YAML 1.2 §9.1.3), so each document is parsed on its own and an error can
/// name its document and absolute line.
fn yaml_documents(text: &str, source: &str) -> Result<Vec<Doc>, ModelError> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut docs = Vec::new();
    for chunk in split_yaml(text) {
        let parsed: Result<Vec<Value>, _> =
            serde_saphyr::from_multiple_with_options(&chunk.text, options.clone());
        match parsed {
            Ok(values) => {
                for value in values {
                    if value.is_null() {
                        continue;
                    }
                    docs.push(Doc {
                        index: docs.len() + 1,
                        value,
                    });
                }
            }
            Err(e) => {
                let offset = chunk.first_line - 1;
                let line = offset + e.location().map_or(1, |l| l.line() as usize).max(1);
                // The renderer appends "at line X, column Y", shifted to the whole text.
                let detail = e
                    .render_with_options(serde_saphyr::render_options! {
                        snippets: serde_saphyr::SnippetMode::Off,
                        line_offset: offset as u64,
                    })
                    .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
                return Err(ModelError::Parse {
                    source_name: source.to_string(),
                    doc: docs.len() + 1,
                    line,
                    msg: format!("invalid YAML: {detail}"),
                });
            }
        }
    }
    Ok(docs)
}

struct Chunk {
    /// 1-based line of the chunk's first line in the whole text.
    first_line: usize,
    text: String,
}

/// `---` or `...` at the start of a line, followed by whitespace or the end of the line.
fn marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether a line carries document content (not blank, a comment or a directive).
fn is_content(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty() || t.starts_with('#') || line.starts_with('%'))
}

fn split_yaml(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut cur = Chunk {
        first_line: 1,
        text: String::new(),
    };
    let mut has_content = false;
    let mut has_start = false;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let lineno = i + 1;
        if marker(line, "---") {
            if has_content || has_start {
                chunks.push(std::mem::replace(
                    &mut cur,
                    Chunk {
                        first_line: lineno,
                        text: String::new(),
                    },
                ));
            }
            has_start = true;
            has_content = is_content(&line[3..]);
            cur.text.push_str(line);
        } else if marker(line, "...") {
            cur.text.push_str(line);
            chunks.push(std::mem::replace(
                &mut cur,
                Chunk {
                    first_line: lineno + 1,
                    text: String::new(),
                },
            ));
            has_content = false;
            has_start = false;
        } else {
            has_content |= is_content(line);
            cur.text.push_str(line);
        }
    }
    chunks.push(cur);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<(usize, String)> {
        split_yaml(text)
            .into_iter()
            .map(|c| (c.first_line, c.text))
            .collect()
    }

    #[test]
    fn split_keeps_leading_comments_with_the_first_document() {
        assert_eq!(
            split("# c\n---\na: 1\n---\nb: 2\n"),
            vec![(1, "# c\n---\na: 1\n".into()), (4, "---\nb: 2\n".into())]
        );
    }

    #[test]
    fn split_only_at_column_zero_markers() {
        assert_eq!(
            split("a: |\n  ---\n---x: 1\n"),
            vec![(1, "a: |\n  ---\n---x: 1\n".into())]
        );
    }

    #[test]
    fn split_at_document_end_markers() {
        assert_eq!(
            split("a: 1\n...\n%YAML 1.2\n---\nb: 2\n"),
            vec![
                (1, "a: 1\n...\n".into()),
                (3, "%YAML 1.2\n---\nb: 2\n".into())
            ]
        );
    }

    #[test]
    fn document_errors_carry_the_item_field_and_value() {
        let text = "kind: List\napiVersion: v1\nitems:\n- {kind: Pod, apiVersion: v2, metadata: {name: a}}\n";
        let err = parse_object_refs(text, "x.yaml").expect_err("bad apiVersion");
        assert_eq!(
            err,
            ModelError::Invalid {
                source_name: "x.yaml".into(),
                doc: 1,
                item: Some(0),
                reason: Box::new(DocumentError::Identity {
                    kind: "Pod".into(),
                    name: Some("a".into()),
                    field: FieldError::UnsupportedApiVersion {
                        value: Value::from("v2"),
                        expected: "v1",
                    },
                }),
            }
        );
        assert_eq!(
            err.to_string(),
            "x.yaml: document 1: items[0]: Pod \"a\" is invalid: apiVersion: Unsupported value: \
             \"v2\": supported values: \"v1\""
        );
        let err = parse_manifests("- 1\n", "y.yaml").expect_err("not a mapping");
        assert!(
            matches!(
                &err,
                ModelError::Invalid {
                    doc: 1,
                    item: None,
                    reason,
                    ..
                } if matches!(**reason, DocumentError::NotAMapping { .. })
            ),
            "{err:?}"
        );
    }
}
