//! The `nft` binary, for the structure of a table (tables, sets, maps, chains, rules) and for
//! reading a whole table back as JSON.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Family, NftError};

/// `nft ARGS`, inside the namespace at `netns` (through `nsenter --net=`) when given.
fn nft(netns: Option<&Path>, args: &[&str]) -> (Command, String) {
    let mut shown = format!("nft {}", args.join(" "));
    let cmd = match netns {
        Some(path) => {
            shown = format!("{shown} in {}", path.display());
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", path.display()))
                .arg("--")
                .arg("nft")
                .args(args);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(args);
            c
        }
    };
    (cmd, shown)
}

/// Runs `nft -f -` with `script` on stdin (one transaction: the whole script or nothing). The
/// error carries what the tool printed on stderr.
pub fn run_script(netns: Option<&Path>, script: &str) -> Result<(), NftError> {
    let (mut cmd, shown) = nft(netns, &["-f", "-"]);
    let tool = |detail: String| NftError::Tool {
        command: shown.clone(),
        detail,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool(format!("cannot start: {e}")))?;
    let stdin = child.stdin.take();
    // Write from a second thread: a long script must not block on a full stderr pipe.
    let written = std::thread::scope(|s| {
        let writer = s.spawn(move || match stdin {
            Some(mut stdin) => stdin.write_all(script.as_bytes()),
            None => Ok(()),
        });
        let out = child.wait_with_output();
        (writer.join(), out)
    });
    let (write, out) = written;
    let out = out.map_err(|e| tool(format!("cannot wait: {e}")))?;
    if !out.status.success() {
        return Err(tool(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    match write {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(tool(format!("cannot write the script: {e}"))),
        Err(_) => return Err(tool("the thread writing the script panicked".to_string())),
    }
    Ok(())
}

/// `nft -j list table FAMILY TABLE`, parsed.
pub fn list_table_json(
    netns: Option<&Path>,
    family: Family,
    table: &str,
) -> Result<serde_json::Value, NftError> {
    let (mut cmd, shown) = nft(netns, &["-j", "list", "table", family.name(), table]);
    let tool = |detail: String| NftError::Tool {
        command: shown.clone(),
        detail,
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool(format!("cannot run: {e}")))?;
    if !out.status.success() {
        return Err(tool(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| tool(format!("invalid JSON: {e}")))
}
