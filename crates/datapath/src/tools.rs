//! The two userspace tools the service proxy calls besides netlink: `conntrack` (to forget
//! UDP flows whose endpoint went away) and `nft -j list chains` (to find the chains of a table
//! without listing its elements). Both run inside a namespace through `nsenter --net`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Why `conntrack` or `nft -j list chains` failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool could not be started (not installed, no `nsenter`).
    #[error("{tool}: cannot run: {source}")]
    Spawn {
        /// `conntrack` or `nft`.
        tool: &'static str,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// The tool ran and exited with a failure.
    #[error("{tool} {args}: exit {code}: {stderr}")]
    Failed {
        /// `conntrack` or `nft`.
        tool: &'static str,
        /// Its arguments, joined with spaces.
        args: String,
        /// The exit code; -1 when it was killed by a signal.
        code: i32,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// `nft -j list chains` printed something that is not the JSON expected.
    #[error("nft -j list chains: {0}")]
    Parse(String),
}

/// `tool args...`, inside `netns` when given.
fn command(netns: Option<&Path>, tool: &str, args: &[String]) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg(tool)
                .args(args);
            c
        }
        None => {
            let mut c = Command::new(tool);
            c.args(args);
            c
        }
    }
}

/// Deletes the UDP conntrack entries whose original destination is `dst:port` (and whose
/// reply comes from `reply_src`, if given). Finding none is not an error.
pub fn conntrack_delete_udp(
    netns: Option<&Path>,
    dst: Ipv4Addr,
    port: u16,
    reply_src: Option<Ipv4Addr>,
) -> Result<u64, ToolError> {
    let mut args: Vec<String> = [
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        &dst.to_string(),
        "--orig-port-dst",
        &port.to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    if let Some(src) = reply_src {
        args.push("--reply-src".into());
        args.push(src.to_string());
    }
    let out = command(netns, "conntrack", &args)
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: "conntrack",
            source,
        })?;
    // "conntrack v1.4.7 (conntrack-tools): N flow entries have been deleted." on stderr; exit
    // 1 when there was nothing to delete.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let deleted = stderr
        .split_whitespace()
        .zip(stderr.split_whitespace().skip(1))
        .find(|(_, next)| *next == "flow")
        .and_then(|(n, _)| n.parse::<u64>().ok());
    match (out.status.success(), deleted) {
        (_, Some(n)) => Ok(n),
        (true, None) => Ok(0),
        (false, None) => Err(ToolError::Failed {
            tool: "conntrack",
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stderr: stderr.trim().to_string(),
        }),
    }
}

/// Names of the chains of table `family name` (empty when the table does not exist).
pub fn nft_chains(
    netns: Option<&Path>,
    family: &str,
    table: &str,
) -> Result<Vec<String>, ToolError> {
    let args: Vec<String> = ["-j", "list", "chains", family]
        .iter()
        .map(ToString::to_string)
        .collect();
    let out = command(netns, "nft", &args)
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: "nft",
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool: "nft",
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| ToolError::Parse(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| ToolError::Parse("no \"nftables\" array".into()))?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("table").and_then(serde_json::Value::as_str) == Some(table))
        .filter_map(|c| c.get("name").and_then(serde_json::Value::as_str))
        .map(str::to_string)
        .collect())
}

/// Sends gratuitous ARP for `ip` on `dev` (`arping -U`), so neighbours that cached another
/// node's MAC for it switch at once.
pub fn gratuitous_arp(netns: Option<&Path>, dev: &str, ip: Ipv4Addr) -> Result<(), ToolError> {
    let args: Vec<String> = ["-U", "-c", "1", "-w", "1", "-I", dev, "-s"]
        .iter()
        .map(ToString::to_string)
        .chain([ip.to_string(), ip.to_string()])
        .collect();
    let out = command(netns, "arping", &args)
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: "arping",
            source,
        })?;
    // arping -U exits 1 when nobody answers, which is normal for an unsolicited ARP.
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        code => Err(ToolError::Failed {
            tool: "arping",
            args: args.join(" "),
            code: code.unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}
