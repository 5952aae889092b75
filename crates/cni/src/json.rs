//! Typed getters over JSON objects whose errors name the field's path (`ips[0].address`).
//!
//! JSON `null` counts as absent everywhere, as the reference Go types treat it.

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::CniError;

/// Longest value text copied into an error's `details`.
const MAX_DETAILS: usize = 256;

/// A required field that is absent, or a field whose value has the wrong shape.
#[derive(Debug)]
pub(crate) enum FieldError {
    Missing(String),
    Invalid {
        field: String,
        reason: String,
        value: String,
    },
}

impl FieldError {
    pub(crate) fn invalid(
        field: impl Into<String>,
        reason: impl Into<String>,
        value: &Value,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
            value: show(value),
        }
    }

    /// `missing <field>`, or `invalid <field>: <reason>` with the value as details.
    pub(crate) fn into_cni(self, code: u32) -> CniError {
        match self {
            Self::Missing(field) => CniError::new(code, format!("missing {field}")),
            Self::Invalid {
                field,
                reason,
                value,
            } => CniError::new(code, format!("invalid {field}: {reason}")).with_details(value),
        }
    }
}

/// A value as text for error details: strings bare, anything else as JSON, cut to a sane length.
pub(crate) fn show(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > MAX_DETAILS {
        let mut cut: String = text.chars().take(MAX_DETAILS).collect();
        cut.push_str("...");
        cut
    } else {
        text
    }
}

/// A JSON object plus the path it was found at, for error messages.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    /// `v` must be an object; `path` names it in errors ("" for the document root).
    pub(crate) fn of(v: &'a Value, path: impl Into<String>) -> Result<Self, FieldError> {
        let path = path.into();
        match v {
            Value::Object(map) => Ok(Self { map, prefix: path }),
            other => {
                let name = if path.is_empty() {
                    "document".to_owned()
                } else {
                    path
                };
                Err(FieldError::invalid(name, "expected an object", other))
            }
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// The value at `key`, `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn require<T>(&self, key: &str, v: Option<T>) -> Result<T, FieldError> {
        v.ok_or_else(|| FieldError::Missing(self.path(key)))
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(FieldError::invalid(
                self.path(key),
                "expected a string",
                other,
            )),
        }
    }

    /// A string that is absent when empty (Go's `omitempty` reading).
    pub(crate) fn nonempty_string(&self, key: &str) -> Result<Option<String>, FieldError> {
        Ok(self.str(key)?.filter(|s| !s.is_empty()).map(str::to_owned))
    }

    /// A non-negative integer that fits `T`.
    pub(crate) fn uint<T: TryFrom<u64>>(&self, key: &str) -> Result<Option<T>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| T::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    FieldError::invalid(self.path(key), "expected a small non-negative integer", v)
                }),
        }
    }

    /// A string parsed with `FromStr`; `what` says what was expected ("a CIDR").
    pub(crate) fn parsed<T: FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, FieldError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                FieldError::invalid(self.path(key), format!("expected {what}"), &Value::from(s))
            }),
        }
    }

    /// The array at `key`; empty when absent.
    pub(crate) fn array(&self, key: &str) -> Result<&'a [Value], FieldError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(FieldError::invalid(
                self.path(key),
                "expected an array",
                other,
            )),
        }
    }

    /// The objects of the array at `key`, each with its indexed path.
    pub(crate) fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>, FieldError> {
        let path = self.path(key);
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| Fields::of(v, format!("{path}[{i}]")))
            .collect()
    }

    /// The object at `key`, `None` when absent.
    pub(crate) fn object(&self, key: &str) -> Result<Option<Fields<'a>>, FieldError> {
        self.get(key)
            .map(|v| Fields::of(v, self.path(key)))
            .transpose()
    }

    /// A list of strings; empty when absent.
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, FieldError> {
        let path = self.path(key);
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(FieldError::invalid(
                    format!("{path}[{i}]"),
                    "expected a string",
                    other,
                )),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_nested_path() {
        let v = json!({"ips": [{"address": "10.0.0.1/24"}, {"address": 5}]});
        let f = Fields::of(&v, "").unwrap();
        let ips = f.objects("ips").unwrap();
        let err = ips[1].str("address").unwrap_err().into_cni(6);
        assert_eq!(err.msg, "invalid ips[1].address: expected a string");
        assert_eq!(err.details.as_deref(), Some("5"));
    }

    #[test]
    fn null_counts_as_absent() {
        let v = json!({"mtu": null, "name": null});
        let f = Fields::of(&v, "x").unwrap();
        assert_eq!(f.uint::<u32>("mtu").unwrap(), None);
        assert!(
            matches!(f.require("name", f.str("name").unwrap()), Err(FieldError::Missing(p)) if p == "x.name")
        );
    }

    #[test]
    fn long_details_are_cut() {
        let s = "é".repeat(1000);
        assert_eq!(show(&Value::from(s)).chars().count(), MAX_DETAILS + 3);
    }
}
