//! The lab's long-running processes (etcd, API server, controller, one kubelet and one agent per node):
//! started detached, recorded (pid and command line) under the lab's run directory, and
//! stopped (`kill -9`, as a crash would) or started again by name — `flatnet lab stop|start`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::names::Lab;
use crate::shell;
use crate::topology::LabError;

/// A lab daemon, named `etcd`, `apiserver`, `controller`, `kubelet/NODE` or `agent/NODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// The lab's etcd, in the root namespace.
    Etcd,
    /// The lab's Kubernetes API server, on loopback in the root namespace.
    ApiServer,
    /// The controller (Deployments, EndpointSlices, LoadBalancer IPs).
    Controller,
    /// The kubelet of the named node.
    Kubelet(String),
    /// The flatnet agent of the named node.
    Agent(String),
}

impl Daemon {
    /// Parses a name as [`Daemon`] writes it (`etcd`, `apiserver`, `controller`, `kubelet/NODE`,
    /// `agent/NODE`).
    pub fn parse(s: &str) -> Result<Daemon, LabError> {
        match s.split_once('/') {
            None if s == "etcd" => Ok(Daemon::Etcd),
            None if s == "apiserver" => Ok(Daemon::ApiServer),
            None if s == "controller" => Ok(Daemon::Controller),
            Some(("kubelet", n)) if !n.is_empty() => Ok(Daemon::Kubelet(n.into())),
            Some(("agent", n)) if !n.is_empty() => Ok(Daemon::Agent(n.into())),
            _ => Err(LabError::Other(format!(
                "unknown component {s:?}: use etcd, apiserver, controller, kubelet/NODE or agent/NODE"
            ))),
        }
    }

    /// File stem under the run directory.
    pub fn id(&self) -> String {
        match self {
            Daemon::Etcd => "etcd".into(),
            Daemon::ApiServer => "apiserver".into(),
            Daemon::Controller => "controller".into(),
            Daemon::Kubelet(n) => format!("kubelet-{n}"),
            Daemon::Agent(n) => format!("agent-{n}"),
        }
    }
}

fn pid_file(lab: &Lab, d: &Daemon) -> std::path::PathBuf {
    lab.run_dir().join(format!("{}.pid", d.id()))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The pid of a running daemon.
pub fn running(lab: &Lab, d: &Daemon) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(lab, d))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// Starts a daemon detached from the caller, its output in the lab's log directory, and
/// records how to start it again.
pub fn spawn(lab: &Lab, d: &Daemon, bin: &Path, args: &[String]) -> Result<u32, LabError> {
    let mut argv = vec![bin.display().to_string()];
    argv.extend(args.iter().cloned());
    let cmd_file = lab.run_dir().join(format!("{}.cmd", d.id()));
    std::fs::write(&cmd_file, serde_json::to_vec(&argv).unwrap_or_default())
        .map_err(|e| LabError::Other(format!("write {}: {e}", cmd_file.display())))?;
    spawn_argv(lab, d, &argv)
}

fn spawn_argv(lab: &Lab, d: &Daemon, argv: &[String]) -> Result<u32, LabError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(LabError::Other("empty command".into()));
    };
    let out = shell::log_file(&lab.log_dir().join(format!("{}.log", d.id())))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::Other(e.to_string()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    shell::detach(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| LabError::Other(format!("start {prog}: {e}")))?;
    let pid = child.id();
    record_pid(lab, d, pid)?;
    Ok(pid)
}

/// Records `pid` as the running process of `d` (its pid file under the lab's run directory).
pub fn record_pid(lab: &Lab, d: &Daemon, pid: u32) -> Result<(), LabError> {
    std::fs::write(pid_file(lab, d), pid.to_string())
        .map_err(|e| LabError::Other(format!("write pid of {}: {e}", d.id())))
}

/// etcd's ports, so a restart brings back the same member on the same endpoint.
pub fn record_etcd_ports(lab: &Lab, client: u16, peer: u16) -> Result<(), LabError> {
    std::fs::write(lab.run_dir().join("etcd.ports"), format!("{client} {peer}"))
        .map_err(|e| LabError::Other(format!("write etcd ports: {e}")))
}

/// Kills a daemon with SIGKILL (as a crash would) and waits until it is gone.
pub fn stop(lab: &Lab, d: &Daemon) -> Result<bool, LabError> {
    let Some(pid) = running(lab, d) else {
        return Ok(false);
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "{} (pid {pid}) did not exit after SIGKILL",
                d.id()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// Starts a stopped daemon again, exactly as `lab up` started it.
pub fn start(lab: &Lab, d: &Daemon) -> Result<u32, LabError> {
    if !lab.etcd_endpoint_file().exists() {
        return Err(LabError::NotUp(lab.name.clone()));
    }
    if let Some(pid) = running(lab, d) {
        return Err(LabError::Other(format!(
            "{} is already running (pid {pid})",
            d.id()
        )));
    }
    if *d == Daemon::Etcd {
        let ports = std::fs::read_to_string(lab.run_dir().join("etcd.ports"))
            .map_err(|e| LabError::Other(format!("etcd ports: {e}")))?;
        let mut it = ports
            .split_whitespace()
            .filter_map(|p| p.parse::<u16>().ok());
        let (Some(client), Some(peer)) = (it.next(), it.next()) else {
            return Err(LabError::Other(format!("bad etcd ports file: {ports:?}")));
        };
        let etcd = store::EtcdProcess::start_on_in_own_session(&lab.data_dir(), client, peer)?;
        let pid = etcd.detach();
        record_pid(lab, d, pid)?;
        return Ok(pid);
    }
    let cmd_file = lab.run_dir().join(format!("{}.cmd", d.id()));
    let argv: Vec<String> = std::fs::read(&cmd_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            LabError::Other(format!("{} was never started in lab {}", d.id(), lab.name))
        })?;
    spawn_argv(lab, d, &argv)
}

/// Every recorded daemon and its pid if running.
pub fn list(lab: &Lab) -> Vec<(String, Option<u32>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(lab.run_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".pid") {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            out.push((id.to_string(), pid.filter(|p| alive(*p))));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names_round_trip() {
        assert_eq!(Daemon::parse("etcd").ok(), Some(Daemon::Etcd));
        assert_eq!(
            Daemon::parse("apiserver").map(|d| d.id()).ok().as_deref(),
            Some("apiserver")
        );
        assert_eq!(
            Daemon::parse("agent/node2").ok(),
            Some(Daemon::Agent("node2".into()))
        );
        assert_eq!(
            Daemon::parse("kubelet/node1")
                .map(|d| d.id())
                .ok()
                .as_deref(),
            Some("kubelet-node1")
        );
        for bad in ["", "agent", "agent/", "dns", "kubelet/"] {
            assert!(Daemon::parse(bad).is_err(), "{bad}");
        }
    }
}
