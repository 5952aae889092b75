//! `/proc/sys` of the calling thread's network namespace (the path is resolved at open time,
//! so callers write from inside the namespace they mean).

use std::path::PathBuf;

/// A sysctl could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}: {source}")]
pub struct SysctlError {
    /// The key, as a path under `/proc/sys`.
    pub key: String,
    /// Why the file could not be read or written.
    pub source: std::io::Error,
}

/// `key` is the path under `/proc/sys` (`net/ipv4/ip_forward`), so interface names that hold
/// dots need no escaping.
fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

/// Reads a key (`net/ipv4/ip_forward`), trimmed.
pub fn read(key: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError {
            key: key.to_string(),
            source,
        })
}

/// Writes `value` unless the key already holds it (a read is cheaper than a write that
/// triggers the kernel's change notifications).
pub fn ensure(key: &str, value: &str) -> Result<(), SysctlError> {
    if read(key)? == value {
        return Ok(());
    }
    std::fs::write(path(key), value).map_err(|source| SysctlError {
        key: key.to_string(),
        source,
    })
}
