//! The crate's error types.

use serde_json::Value;

use crate::kind::Kind;
use crate::validate::{describe, show};

/// Why a manifest or an object was rejected.
///
/// Messages follow the API server's field errors (`<path>: Invalid value: <value>: <detail>`),
/// so a user sees the document, the field and the value at once.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum ModelError {
    /// A document of a manifest is not an object flatnet accepts (unknown kind, invalid field).
    #[error("{source_name}: document {doc}: {}{reason}", item_prefix(*.item))]
    Invalid {
        /// Where the manifest came from, as the caller named it (a file name).
        source_name: String,
        /// 1-based index among the non-empty documents of the source.
        doc: usize,
        /// 0-based index in the document's `items` when the document is a `List`.
        item: Option<usize>,
        /// What is wrong with the document (or the item); boxed to keep `ModelError` small.
        reason: Box<DocumentError>,
    },
    /// A document of a manifest is not YAML or JSON.
    #[error("{source_name}: document {doc}: {msg}")]
    Parse {
        /// Where the manifest came from, as the caller named it (a file name).
        source_name: String,
        /// 1-based index among the non-empty documents of the source.
        doc: usize,
        /// 1-based line in the source where the problem was found.
        line: usize,
        /// The parser's message.
        msg: String,
    },
    /// An object failed [`crate::validate`] outside a manifest.
    #[error("{0}")]
    InvalidObject(String),
    /// A value could not be converted to or from a typed view.
    #[error("{0}")]
    Type(String),
}

/// `items[i]: ` for an item of a `List`, nothing for a plain document.
fn item_prefix(item: Option<usize>) -> String {
    item.map(|i| format!("items[{i}]: ")).unwrap_or_default()
}

/// Why one document of a manifest (or one item of a `List`) is not an object flatnet accepts.
/// The message is the API server's (`Pod "default/web" is invalid: <field error>; ...`).
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum DocumentError {
    /// The document is a scalar or a list, not a mapping.
    #[error(
        "a document must be a mapping with apiVersion, kind and metadata, not {}",
        show(.value)
    )]
    NotAMapping {
        /// The document.
        value: Value,
    },
    /// A field that says what the object is (`kind`, `apiVersion`, `metadata.name`,
    /// `metadata.namespace`) is missing or wrong.
    #[error("{}", describe(.kind, .name.as_deref(), &[.field.to_string()]))]
    Identity {
        /// The document's `kind` as written (`object` when it has none).
        kind: String,
        /// `metadata.name`, when the document has one.
        name: Option<String>,
        /// The field and what is wrong with it.
        field: FieldError,
    },
    /// The object breaks the API server's validation rules.
    #[error("{}", describe(.kind.as_str(), Some(.name.as_str()), .errors))]
    Invalid {
        /// The object's kind.
        kind: Kind,
        /// `namespace/name`, or `name` for a cluster-scoped kind.
        name: String,
        /// Every field error, each `<path>: <reason>` with the value as written.
        errors: Vec<String>,
    },
}

/// A field that identifies a document (`kind`, `apiVersion`, `metadata.name`,
/// `metadata.namespace`) and is missing or wrong, in the API server's wording.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum FieldError {
    /// The field is absent, null or empty.
    #[error("{field}: Required value")]
    Required {
        /// The field's path.
        field: &'static str,
    },
    /// The field holds something other than a string.
    #[error("{field}: Invalid value: {}: must be a string", show(.value))]
    NotAString {
        /// The field's path.
        field: &'static str,
        /// The value as written.
        value: Value,
    },
    /// `kind` names a kind flatnet does not know, or does not accept here.
    #[error(
        "kind: Unsupported value: {kind:?}: supported values: {}",
        quoted_kinds(.supported)
    )]
    UnsupportedKind {
        /// The `kind` as written.
        kind: String,
        /// The kinds accepted here.
        supported: Vec<Kind>,
    },
    /// `apiVersion` is not the one of the document's kind.
    #[error("apiVersion: Unsupported value: {}: supported values: {expected:?}", show(.value))]
    UnsupportedApiVersion {
        /// The `apiVersion` as written.
        value: Value,
        /// The kind's API version.
        expected: &'static str,
    },
}

/// `"Pod", "Service"`.
fn quoted_kinds(kinds: &[Kind]) -> String {
    let quoted: Vec<String> = kinds.iter().map(|k| format!("{:?}", k.as_str())).collect();
    quoted.join(", ")
}
