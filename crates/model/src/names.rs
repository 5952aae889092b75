//! Name syntax checks, with the API server's wording. Each returns `Err(detail)` naming the
//! rule that was broken (the caller adds the field and the value).

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
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !is_label_chars(s) {
        return Err(DNS1123_LABEL.into());
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (most object names).
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !s.split('.').all(is_label_chars) {
        return Err(DNS1123_SUBDOMAIN.into());
    }
    Ok(())
}

/// RFC 1035 label: like an RFC 1123 label but starting with a letter (Service names).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !is_label_chars(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(DNS1035_LABEL.into());
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
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !is_name_part(name) {
        return Err(QUALIFIED_NAME.into());
    }
    Ok(())
}

/// A label key (same as [`qualified_name`]).
pub fn label_key(s: &str) -> Result<(), String> {
    qualified_name(s)
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !s.is_empty() && !is_name_part(s) {
        return Err(LABEL_VALUE.into());
    }
    Ok(())
}

/// IANA service name (named ports): at most 15 characters of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or doubled `-`.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    if s.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    Ok(())
}

/// A Secret data key: at most 253 characters of `[-._a-zA-Z0-9]`, not `.` or `..`.
pub fn config_map_key(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be between 1 and 253 characters".into());
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'".into(),
        );
    }
    if s == "." || s == ".." {
        return Err(format!("must not be '{s}'"));
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
}
