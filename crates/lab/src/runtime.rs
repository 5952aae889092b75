//! A minimal CNI runtime (the part of containerd/CRI-O/podman that calls plugins): reads a
//! network configuration list and executes its plugins as the spec says (ADD in order with
//! `prevResult`, DEL in reverse order with the final ADD result), with the environment and
//! stdin a runtime passes, inside the node's network namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::shell;

/// Why a CNI operation failed: the runtime's own error, or the plugin's (its CNI error code).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The network configuration list could not be read or is invalid.
    #[error("network config {path}: {msg}")]
    Config {
        /// The conflist file.
        path: String,
        /// What is wrong: unreadable, not JSON, or a required field missing.
        msg: String,
    },
    /// No executable of the plugin's `type` in any `CNI_PATH` directory (or the type is not a
    /// plain file name).
    #[error("plugin {plugin} not found in CNI_PATH {path}")]
    NotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The directories searched, `:`-separated.
        path: String,
    },
    /// The plugin could not be started or talked to.
    #[error("plugin {plugin} {command}: {source}")]
    Exec {
        /// The plugin's `type`.
        plugin: String,
        /// The CNI command (`ADD`, `DEL`, `GC`).
        command: String,
        /// Spawning it, writing its stdin or waiting for it failed.
        source: std::io::Error,
    },
    /// The plugin exited non-zero: its CNI error result (or its raw output when that is not JSON).
    #[error("plugin {plugin} {command} failed (code {code}): {msg}{details}")]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// The CNI command (`ADD`, `DEL`, `GC`).
        command: String,
        /// The CNI error `code` (999 when the output carried none).
        code: u64,
        /// The CNI error `msg`, or the plugin's stdout and stderr.
        msg: String,
        /// The CNI error `details` as ` (details)`, or empty.
        details: String,
    },
    /// The plugin's output is not a CNI result, or the ADD chain produced no result at all.
    #[error("plugin {plugin} {command} printed invalid JSON: {output}")]
    BadOutput {
        /// The plugin's `type` (the network's name when the chain produced no result).
        plugin: String,
        /// The CNI command (`ADD`, `DEL`, `GC`).
        command: String,
        /// What it printed.
        output: String,
    },
}

/// A network configuration list (`*.conflist`).
#[derive(Debug, Clone)]
pub struct NetworkList {
    /// `cniVersion`, passed to every plugin.
    pub cni_version: String,
    /// The network `name`, passed to every plugin.
    pub name: String,
    /// The plugin configurations, in chain order.
    pub plugins: Vec<Value>,
}

impl NetworkList {
    /// Reads a conflist; fails without `cniVersion`, `name` or a non-empty `plugins` list.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let cfg = |msg: String| RuntimeError::Config {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| cfg(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| cfg(e.to_string()))?;
        let cni_version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| cfg("missing cniVersion".into()))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| cfg("missing name".into()))?;
        let plugins = v
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| cfg("missing plugins".into()))?;
        if plugins.is_empty() {
            return Err(cfg("plugins is empty".into()));
        }
        Ok(Self {
            cni_version: cni_version.to_string(),
            name: name.to_string(),
            plugins: plugins.clone(),
        })
    }

    /// The request config for one plugin: the plugin object plus `cniVersion` and `name`.
    fn request(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        if let Some(obj) = conf.as_object_mut() {
            obj.insert("cniVersion".into(), json!(self.cni_version));
            obj.insert("name".into(), json!(self.name));
            obj.remove("capabilities");
            if let Some(prev) = prev {
                obj.insert("prevResult".into(), prev.clone());
            }
        }
        conf
    }
}

/// One attachment of a container to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the sandbox's id.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`: the interface to create in it (`eth0`).
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Directories searched for plugin binaries.
    pub cni_path: Vec<PathBuf>,
    /// Namespace file the plugins run in (the node's); None: the caller's.
    pub run_in: Option<String>,
}

fn plugin_type(plugin: &Value) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// ADD every plugin in order; returns the final result.
pub fn add(list: &NetworkList, att: &Attachment) -> Result<Value, RuntimeError> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let out = exec(
            &plugin_type(plugin),
            "ADD",
            &list.request(plugin, prev.as_ref()),
            att,
        )?;
        prev = out.or(prev);
    }
    prev.ok_or_else(|| RuntimeError::BadOutput {
        plugin: list.name.clone(),
        command: "ADD".into(),
        output: "no result".into(),
    })
}

/// DEL every plugin in reverse order with the final ADD result; keeps going past failures
/// and returns the first one.
pub fn del(
    list: &NetworkList,
    att: &Attachment,
    result: Option<&Value>,
) -> Result<(), RuntimeError> {
    let mut first = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = exec(
            &plugin_type(plugin),
            "DEL",
            &list.request(plugin, result),
            att,
        ) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// GC every plugin with the attachments that are still valid (`cni.dev/valid-attachments`,
/// and the legacy `cni.dev/attachments`, as libcni sends both); keeps going past failures.
pub fn gc(
    list: &NetworkList,
    att: &Attachment,
    valid: &[(String, String)],
) -> Result<(), RuntimeError> {
    let valid: Vec<Value> = valid
        .iter()
        .map(|(c, i)| json!({"containerID": c, "ifname": i}))
        .collect();
    let mut first = None;
    for plugin in &list.plugins {
        let mut conf = list.request(plugin, None);
        conf["cni.dev/valid-attachments"] = json!(valid);
        conf["cni.dev/attachments"] = json!(valid);
        if let Err(e) = exec(&plugin_type(plugin), "GC", &conf, att) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    if name.is_empty() || name.contains('/') {
        return Err(RuntimeError::NotFound {
            plugin: name.into(),
            path: "(invalid type)".into(),
        });
    }
    path.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| RuntimeError::NotFound {
            plugin: name.into(),
            path: path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Executes one plugin with the CNI environment and `conf` on stdin.
pub fn exec(
    plugin: &str,
    command: &str,
    conf: &Value,
    att: &Attachment,
) -> Result<Option<Value>, RuntimeError> {
    let bin = find_plugin(plugin, &att.cni_path)?;
    let exec_err = |source| RuntimeError::Exec {
        plugin: plugin.into(),
        command: command.into(),
        source,
    };
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", &att.ifname)
        .env(
            "CNI_ARGS",
            att.args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        )
        .env(
            "CNI_PATH",
            std::env::join_paths(&att.cni_path).unwrap_or_default(),
        )
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ns = match &att.run_in {
        Some(ns) => Some(
            shell::in_netns(&mut cmd, ns)
                .map_err(|e| exec_err(std::io::Error::other(e.to_string())))?,
        ),
        None => None,
    };
    let mut child = cmd.spawn().map_err(exec_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(exec_err)?;
    }
    let out = child.wait_with_output().map_err(exec_err)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        return Err(RuntimeError::Plugin {
            plugin: plugin.into(),
            command: command.into(),
            code: v.get("code").and_then(Value::as_u64).unwrap_or(999),
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!("{stdout} {}", String::from_utf8_lossy(&out.stderr).trim())
                }),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
        });
    }
    if stdout.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&stdout)
        .map(Some)
        .map_err(|_| RuntimeError::BadOutput {
            plugin: plugin.into(),
            command: command.into(),
            output: stdout,
        })
}

/// The first IPv4 address of a CNI result (`ips[0].address` without the prefix).
pub fn result_ip(result: &Value) -> Option<std::net::Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|i| i.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .next()
}
