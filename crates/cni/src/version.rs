//! Version negotiation: exact match against [`SUPPORTED_VERSIONS`] and the verbs each version allows.

use crate::{CniError, Command, SUPPORTED_VERSIONS, code};

/// `"1.0.0"` -> `(1, 0, 0)`; `None` for anything that is not three dot-separated numbers.
pub(crate) fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(out)
}

/// Whether the plugin speaks `v` (exact string match, as the reference `Reconciler.CheckRaw`).
pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// The reference library's list format: `["0.3.0" "0.3.1" ...]`.
fn supported_list() -> String {
    let quoted: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|v| format!("{v:?}"))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Code 1 for a version the plugin does not speak; `what` is "config" or "result".
pub(crate) fn incompatible(what: &str, v: &str) -> CniError {
    CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(format!(
        "{what} is {v:?}, plugin supports {}",
        supported_list()
    ))
}

/// Checks `v` is supported and new enough for `cmd`: CHECK needs 0.4.0, GC and STATUS need 1.1.0.
pub(crate) fn check(cmd: Command, v: &str) -> Result<(), CniError> {
    if !is_supported(v) {
        return Err(incompatible("config", v));
    }
    let min = match cmd {
        Command::Check => (0, 4, 0),
        Command::Gc | Command::Status => (1, 1, 0),
        Command::Add | Command::Del | Command::Version => return Ok(()),
    };
    match parse(v) {
        Some(have) if have >= min => Ok(()),
        _ => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {cmd}"),
        )
        .with_details(format!(
            "config is {v:?}, {cmd} needs {}.{}.{} or later",
            min.0, min.1, min.2
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_three_numbers() {
        assert_eq!(parse("1.1.0"), Some((1, 1, 0)));
        assert_eq!(parse("0.10.2"), Some((0, 10, 2)));
        for bad in ["", "1", "1.0", "1.0.0.0", "1.x.0", "-1.0.0", "1..0"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn supported_versions_are_ascending_and_parse() {
        let parsed: Vec<_> = SUPPORTED_VERSIONS.iter().map(|v| parse(v)).collect();
        assert!(parsed.iter().all(Option::is_some));
        assert!(parsed.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn incompatible_details_list_versions_like_the_reference() {
        let e = incompatible("config", "9.9.9");
        assert_eq!(
            e.details.as_deref(),
            Some(r#"config is "9.9.9", plugin supports ["0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#)
        );
    }
}
