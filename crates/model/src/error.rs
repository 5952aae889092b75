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
        /// Where the manifest came from, as the caller named it (a file name).
        source_name: String,
        /// 1-based index among the non-empty documents of the source.
        doc: usize,
        /// The field error(s), in the API server's wording.
        msg: String,
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
