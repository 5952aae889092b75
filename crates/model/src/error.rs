//! The crate's error type.

/// Why a manifest or an object was rejected.
///
/// Messages follow the API server's field errors (`<path>: Invalid value: <value>: <detail>`),
/// so a user sees the document, the field and the value at once.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum ModelError {
    /// A document of a manifest is not an object flatnet accepts (unknown kind, invalid field).
    #[error("{source_name}: document {doc}: {msg}")]
    Invalid {
        source_name: String,
        /// 1-based index among the non-empty documents of the source.
        doc: usize,
        msg: String,
    },
    /// A document of a manifest is not YAML or JSON.
    #[error("{source_name}: document {doc}: {msg}")]
    Parse {
        source_name: String,
        /// 1-based index among the non-empty documents of the source.
        doc: usize,
        /// 1-based line in the source where the problem was found.
        line: usize,
        msg: String,
    },
    /// An object failed [`crate::validate`] outside a manifest.
    #[error("{0}")]
    InvalidObject(String),
    /// A value could not be converted to or from a typed view.
    #[error("{0}")]
    Type(String),
}
