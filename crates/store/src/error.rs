//! The one error type every [`crate::Store`] returns.

/// What went wrong talking to the store, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time: keep state as it is, retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch start revision was compacted away: relist, then watch from the listing revision.
    #[error("watch revision compacted, oldest available revision is {revision}")]
    Compacted {
        /// The oldest revision the store still has.
        revision: i64,
    },
    /// A conditional write lost: the key changed since it was read.
    #[error("conflicting update of key {key}")]
    Conflict {
        /// The key, relative to the store prefix.
        key: String,
    },
    /// The request can never succeed as asked (empty key, unknown lease, undecodable value).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// Anything else the store reported.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// True when the same request may succeed later without changing it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
