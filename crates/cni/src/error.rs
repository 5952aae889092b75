//! The CNI error object and the spec's error codes ([SPEC] §5 "Error").

use serde_json::{Map, Value};

/// Error codes from the spec. 0-99 are reserved by the spec; 100+ are plugin-specific.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration; the message names the key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist; the runtime need not call DEL.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables; the message names them.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, e.g. reading stdin.
    pub const IO: u32 = 5;
    /// Failed to decode content (malformed JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (transient condition).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: cannot serve ADD, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Internal error (the reference library's catch-all).
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: what the plugin prints on stdout before exiting non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// The CNI error code (see [`code`]); decides how the runtime reacts.
    pub code: u32,
    /// `msg`: a short description of the error.
    pub msg: String,
    /// `details`: a longer explanation (the underlying cause), if any.
    pub details: Option<String>,
}

impl CniError {
    /// An error with `code` and `msg`, without details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// The same error with `details` set.
    pub fn with_details(self, d: impl Into<String>) -> Self {
        Self {
            details: Some(d.into()),
            ..self
        }
    }

    /// `{"cniVersion": v, "code": c, "msg": m, "details"?: d}`.
    ///
    /// `cniVersion` is left out when `cni_version` is empty (the version is not known yet, as
    /// when stdin could not be decoded); the reference plugins never send it at all.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = Map::new();
        if !cni_version.is_empty() {
            out.insert("cniVersion".into(), cni_version.into());
        }
        out.insert("code".into(), self.code.into());
        out.insert("msg".into(), self.msg.clone().into());
        if let Some(d) = &self.details {
            out.insert("details".into(), d.clone().into());
        }
        Value::Object(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_json_has_details_only_when_set() {
        let e = CniError::new(code::DECODE, "bad json");
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 6, "msg": "bad json"})
        );
        let e = e.with_details("line 1");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 6, "msg": "bad json", "details": "line 1"})
        );
    }

    #[test]
    fn error_json_omits_unknown_version() {
        let e = CniError::new(code::IO, "stdin closed");
        assert_eq!(e.to_json(""), json!({"code": 5, "msg": "stdin closed"}));
        assert_eq!(e.to_string(), "stdin closed");
    }
}
