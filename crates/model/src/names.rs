//! Name syntax checks, with the API server's wording. Each returns a [`NameError`] that names
//! the rule that was broken and the value (or part of it) that broke it; its message is the API
//! server's detail, to which the caller adds the field path and the whole value.

const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or \
'123-abc')";
const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
(e.g. 'example.com')";
const DNS1035_LABEL: &str = "a DNS-1035 label must consist of lower case alphanumeric characters \
or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. \
'my-name', or 'abc-123')";
const QUALIFIED_NAME: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', \
and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or \
'123-abc')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric \
characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
'MyValue', or 'my_value', or '12345')";
const IANA_SVC_NAME: &str =
    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
const CONFIG_MAP_KEY: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";

/// A name syntax, as the API server's validators know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameRule {
    /// RFC 1123 label ([`dns1123_label`]).
    Dns1123Label,
    /// RFC 1123 subdomain ([`dns1123_subdomain`]); also the prefix of a qualified name.
    Dns1123Subdomain,
    /// RFC 1035 label ([`dns1035_label`]).
    Dns1035Label,
    /// The name part of a qualified name, after the optional `prefix/` ([`qualified_name`]).
    QualifiedName,
    /// A label value ([`label_value`]).
    LabelValue,
    /// An IANA service name ([`iana_svc_name`]).
    IanaSvcName,
    /// A Secret or ConfigMap data key ([`config_map_key`]).
    ConfigMapKey,
}

impl NameRule {
    /// The most characters (bytes) a value may have under this rule.
    pub const fn max_len(self) -> usize {
        match self {
            Self::Dns1123Subdomain | Self::ConfigMapKey => 253,
            Self::IanaSvcName => 15,
            Self::Dns1123Label | Self::Dns1035Label | Self::QualifiedName | Self::LabelValue => 63,
        }
    }

    /// The API server's description of the characters and shape the rule allows.
    pub const fn pattern(self) -> &'static str {
        match self {
            Self::Dns1123Label => DNS1123_LABEL,
            Self::Dns1123Subdomain => DNS1123_SUBDOMAIN,
            Self::Dns1035Label => DNS1035_LABEL,
            Self::QualifiedName => QUALIFIED_NAME,
            Self::LabelValue => LABEL_VALUE,
            Self::IanaSvcName => IANA_SVC_NAME,
            Self::ConfigMapKey => CONFIG_MAP_KEY,
        }
    }

    /// The detail for a value longer than [`Self::max_len`].
    fn too_long(self) -> String {
        let limit = self.max_len();
        match self {
            Self::QualifiedName => format!("name part must be no more than {limit} characters"),
            Self::ConfigMapKey => format!("must be between 1 and {limit} characters"),
            _ => format!("must be no more than {limit} characters"),
        }
    }

    /// The detail for an empty value where the rule needs one.
    fn empty(self) -> String {
        match self {
            Self::QualifiedName => "name part must be non-empty".into(),
            Self::ConfigMapKey => self.too_long(),
            _ => "must be non-empty".into(),
        }
    }
}

/// Why a name breaks its syntax rule. The message is the API server's detail
/// (`must be no more than 63 characters`), without the field or the value.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The value is empty where the rule needs at least one character.
    #[error("{}", .rule.empty())]
    Empty {
        /// The rule that needs a value.
        rule: NameRule,
    },
    /// The value is longer than the rule allows.
    #[error("{}", .rule.too_long())]
    TooLong {
        /// The value (for a qualified name, the part that is too long).
        value: String,
        /// The rule broken.
        rule: NameRule,
        /// The most characters the rule allows ([`NameRule::max_len`]).
        limit: usize,
    },
    /// The value has a character the rule does not allow, or starts or ends wrongly.
    #[error("{}", .rule.pattern())]
    Pattern {
        /// The value (for a qualified name, the part that does not match).
        value: String,
        /// The rule broken.
        rule: NameRule,
    },
    /// An IANA service name with `--`.
    #[error("must not contain consecutive hyphens")]
    ConsecutiveHyphens {
        /// The service name.
        value: String,
    },
    /// An IANA service name without a letter (`8080`).
    #[error("must contain at least one letter (a-z)")]
    NoLetter {
        /// The service name.
        value: String,
    },
    /// An IANA service name that starts or ends with `-`.
    #[error("must not begin or end with a hyphen")]
    HyphenAtEdge {
        /// The service name.
        value: String,
    },
    /// A data key that is `.` or `..`.
    #[error("must not be '{value}'")]
    Reserved {
        /// The key.
        value: String,
    },
    /// The prefix of a qualified name (before `/`) is not a DNS subdomain.
    #[error("prefix part {0}")]
    Prefix(Box<NameError>),
}

impl NameError {
    fn too_long(value: &str, rule: NameRule) -> Self {
        Self::TooLong {
            value: value.to_string(),
            rule,
            limit: rule.max_len(),
        }
    }

    fn pattern(value: &str, rule: NameRule) -> Self {
        Self::Pattern {
            value: value.to_string(),
            rule,
        }
    }

    /// The rule that was broken.
    pub fn rule(&self) -> NameRule {
        match self {
            Self::Empty { rule } | Self::TooLong { rule, .. } | Self::Pattern { rule, .. } => *rule,
            Self::ConsecutiveHyphens { .. } | Self::NoLetter { .. } | Self::HyphenAtEdge { .. } => {
                NameRule::IanaSvcName
            }
            Self::Reserved { .. } => NameRule::ConfigMapKey,
            Self::Prefix(e) => e.rule(),
        }
    }
}

fn is_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters
/// (namespace names, container names).
pub fn dns1123_label(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::Dns1123Label;
    if s.len() > RULE.max_len() {
        return Err(NameError::too_long(s, RULE));
    }
    if !is_label_chars(s) {
        return Err(NameError::pattern(s, RULE));
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (most object names).
pub fn dns1123_subdomain(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::Dns1123Subdomain;
    if s.len() > RULE.max_len() {
        return Err(NameError::too_long(s, RULE));
    }
    if !s.split('.').all(is_label_chars) {
        return Err(NameError::pattern(s, RULE));
    }
    Ok(())
}

/// RFC 1035 label: like an RFC 1123 label but starting with a letter (Service names).
pub fn dns1035_label(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::Dns1035Label;
    if s.len() > RULE.max_len() {
        return Err(NameError::too_long(s, RULE));
    }
    if !is_label_chars(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(NameError::pattern(s, RULE));
    }
    Ok(())
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name, the syntax of label and annotation keys: an optional DNS subdomain prefix
/// and `/`, then a name of at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
/// A bad prefix is reported as [`NameError::Prefix`].
pub fn qualified_name(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::QualifiedName;
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(NameError::Prefix(Box::new(NameError::Empty {
                rule: NameRule::Dns1123Subdomain,
            })));
        }
        dns1123_subdomain(prefix).map_err(|e| NameError::Prefix(Box::new(e)))?;
    }
    if name.is_empty() {
        return Err(NameError::Empty { rule: RULE });
    }
    if name.len() > RULE.max_len() {
        return Err(NameError::too_long(name, RULE));
    }
    if !is_name_part(name) {
        return Err(NameError::pattern(name, RULE));
    }
    Ok(())
}

/// A label key (same as [`qualified_name`]).
pub fn label_key(s: &str) -> Result<(), NameError> {
    qualified_name(s)
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends.
pub fn label_value(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::LabelValue;
    if s.len() > RULE.max_len() {
        return Err(NameError::too_long(s, RULE));
    }
    if !s.is_empty() && !is_name_part(s) {
        return Err(NameError::pattern(s, RULE));
    }
    Ok(())
}

/// IANA service name (named ports): at most 15 characters of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or doubled `-`.
pub fn iana_svc_name(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::IanaSvcName;
    if s.len() > RULE.max_len() {
        return Err(NameError::too_long(s, RULE));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(NameError::pattern(s, RULE));
    }
    let value = s.to_string();
    if s.contains("--") {
        return Err(NameError::ConsecutiveHyphens { value });
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err(NameError::NoLetter { value });
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(NameError::HyphenAtEdge { value });
    }
    Ok(())
}

/// A Secret data key: at most 253 characters of `[-._a-zA-Z0-9]`, not `.` or `..`.
pub fn config_map_key(s: &str) -> Result<(), NameError> {
    const RULE: NameRule = NameRule::ConfigMapKey;
    if s.is_empty() {
        return Err(NameError::Empty { rule: RULE });
    }
    if s.len() > RULE.max_len() {
        return Err(NameError::too_long(s, RULE));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(NameError::pattern(s, RULE));
    }
    if s == "." || s == ".." {
        return Err(NameError::Reserved {
            value: s.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_and_subdomains() {
        for ok in ["a", "abc", "a-b", "0", "123-abc", &"a".repeat(63)] {
            assert_eq!(dns1123_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        for ok in ["a.b", "example.com", "a-b.c-d", "0.0"] {
            assert_eq!(dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A.b", "a/b", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
        assert_eq!(dns1035_label("web-1"), Ok(()));
        assert!(dns1035_label("1web").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "app",
            "App_1.x-y",
            "kubernetes.io/metadata.name",
            "example.com/Name",
            &"a".repeat(63),
        ] {
            assert_eq!(label_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "-a",
            "a-",
            "Example.com/a",
            "a/b/c",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "v1", "A.b_c-d", &"a".repeat(63)] {
            assert_eq!(label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-", "a-", "a b", "a/b", &"a".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iana_service_names() {
        for ok in ["http", "h2c", "web-8080", "a"] {
            assert_eq!(iana_svc_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "8080",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "a_b",
            "abcdefghijklmnop",
        ] {
            assert!(iana_svc_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_carry_the_value_and_rule_with_the_api_servers_wording() {
        let long = "a".repeat(64);
        assert_eq!(
            dns1123_label(&long),
            Err(NameError::TooLong {
                value: long.clone(),
                rule: NameRule::Dns1123Label,
                limit: 63
            })
        );
        assert_eq!(
            dns1123_label(&long).map_err(|e| e.to_string()),
            Err("must be no more than 63 characters".into())
        );
        let err = dns1035_label("1web").expect_err("starts with a digit");
        assert_eq!(err.rule(), NameRule::Dns1035Label);
        assert_eq!(err.to_string(), DNS1035_LABEL);
        let cases: [(Result<(), NameError>, &str); 10] = [
            (qualified_name("/a"), "prefix part must be non-empty"),
            (
                qualified_name("Example.com/a"),
                &format!("prefix part {DNS1123_SUBDOMAIN}"),
            ),
            (qualified_name("a/"), "name part must be non-empty"),
            (
                qualified_name(&format!("x/{long}")),
                "name part must be no more than 63 characters",
            ),
            (qualified_name("a b"), QUALIFIED_NAME),
            (
                iana_svc_name("ht--tp"),
                "must not contain consecutive hyphens",
            ),
            (
                iana_svc_name("8080"),
                "must contain at least one letter (a-z)",
            ),
            (
                iana_svc_name("-http"),
                "must not begin or end with a hyphen",
            ),
            (config_map_key(""), "must be between 1 and 253 characters"),
            (config_map_key(".."), "must not be '..'"),
        ];
        for (got, want) in cases {
            assert_eq!(got.map_err(|e| e.to_string()), Err(want.to_string()));
        }
        assert_eq!(
            qualified_name("Example.com/a"),
            Err(NameError::Prefix(Box::new(NameError::Pattern {
                value: "Example.com".into(),
                rule: NameRule::Dns1123Subdomain
            })))
        );
    }
}
