//! The node's CNI conflist, and how files are written (atomically).

use std::path::Path;

use ipnet::Ipv4Net;
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Conflist<'a> {
    cni_version: &'a str,
    name: &'a str,
    plugins: [Plugin<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plugin<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    subnet: Ipv4Net,
    data_dir: &'a Path,
    mtu: u32,
}

/// The conflist cannot be rendered: `dataDir` (the IPAM directory) is not UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("render CNI conflist (dataDir {}): {source}", dir.display())]
pub struct ConflistError {
    /// The IPAM directory.
    pub dir: std::path::PathBuf,
    /// What serde said.
    pub source: serde_json::Error,
}

/// The node's CNI network configuration list for `flatnet-cni`; fails only when `ipam_dir`
/// is not UTF-8.
pub fn render_conflist(
    subnet: Ipv4Net,
    ipam_dir: &Path,
    mtu: u32,
) -> Result<String, ConflistError> {
    let conflist = Conflist {
        cni_version: "1.1.0",
        name: "flatnet",
        plugins: [Plugin {
            kind: "flatnet-cni",
            subnet,
            data_dir: ipam_dir,
            mtu,
        }],
    };
    let mut text = serde_json::to_string_pretty(&conflist).map_err(|source| ConflistError {
        dir: ipam_dir.to_path_buf(),
        source,
    })?;
    text.push('\n');
    Ok(text)
}

/// Writes `content` to `path` through a temporary file and a rename (readers never see half a
/// file), creating the parent directory; does nothing when the file already holds `content`.
/// Returns whether it wrote.
pub fn write_atomic(path: &Path, content: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, content)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(true)
}
