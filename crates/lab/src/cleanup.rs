//! Finds and removes everything one lab made: processes (daemons, etcd, pod containers,
//! anything still running inside a lab namespace), namespaces, mounts and state directories.
//! Works from what is on the machine, not from what the lab remembers, so it also cleans up
//! after a crash (`kill -9` of every lab process).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::names::Lab;
use crate::shell;

/// What a cleanup removed, and what it could not.
#[derive(Debug, Default)]
pub struct Report {
    /// Processes killed (SIGKILL).
    pub processes: usize,
    /// Named network namespaces deleted.
    pub namespaces: usize,
    /// Mount points under the lab's directories unmounted.
    pub mounts: usize,
    /// State directories (run and data) removed.
    pub dirs: usize,
    /// What could not be removed, one message each; cleanup went on past them.
    pub errors: Vec<String>,
}

impl Report {
    /// Whether nothing was found to remove (errors aside).
    pub fn is_empty(&self) -> bool {
        self.processes + self.namespaces + self.mounts + self.dirs == 0
    }
}

/// (dev, inode) of every namespace of the lab.
fn lab_netns_ids(lab: &Lab) -> HashSet<(u64, u64)> {
    shell::netns_with_prefix(&lab.netns_prefix())
        .iter()
        .filter_map(|n| std::fs::metadata(shell::netns_path(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Pids of processes that belong to the lab: its daemons (by the marker on their command
/// line), its etcd (by its data directory), processes naming its run directory (system pods
/// that reach etcd from its namespace) and everything inside a lab namespace.
pub fn lab_processes(lab: &Lab) -> Vec<i32> {
    let ids = lab_netns_ids(lab);
    let marker = lab.daemon_marker();
    let data_dir = lab.data_dir().display().to_string();
    // System pods (kube-dns, the ingress gateway) move their threads to etcd's namespace, so
    // their own netns is not a lab one; they name the lab's run dir on their command line.
    let run_dir = format!("{}/", lab.run_dir().display());
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args
            .iter()
            .any(|a| *a == marker || a.starts_with(&data_dir) || a.contains(&run_dir));
        let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| ids.contains(&(m.dev(), m.ino())))
            .unwrap_or(false);
        if ours || in_ns {
            out.push(pid);
        }
    }
    out
}

/// Removes everything of `lab`. Keeps going after errors and reports them all.
pub fn remove_all(lab: &Lab) -> Report {
    let mut report = Report::default();
    // Processes first, so nothing recreates what we remove next.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = HashSet::new();
    loop {
        let pids = lab_processes(lab);
        let alive: Vec<i32> = pids.into_iter().filter(|p| !is_zombie(*p)).collect();
        if alive.is_empty() {
            break;
        }
        for pid in &alive {
            if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() && killed.insert(*pid) {
                report.processes += 1;
            }
        }
        if Instant::now() > deadline {
            report
                .errors
                .push(format!("processes still alive after SIGKILL: {alive:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Mounts under the lab's directories (none are expected, but a crash may leave some).
    let dirs = [lab.run_dir(), lab.data_dir()];
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| dirs.iter().any(|d| p.starts_with(&*d.to_string_lossy())))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => report.mounts += 1,
                Err(e) => report.errors.push(format!("umount {p}: {e}")),
            }
        }
    }
    for ns in shell::netns_with_prefix(&lab.netns_prefix()) {
        match shell::ip(["netns", "del", &ns]) {
            Ok(_) => report.namespaces += 1,
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for d in dirs {
        if d.exists() {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => report.dirs += 1,
                Err(e) => report.errors.push(format!("remove {}: {e}", d.display())),
            }
        }
        // The shared parents (/run/flatnet, /var/lib/flatnet) go once no lab uses them.
        if let Some(parent) = d.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    report
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// True when anything of the lab exists on this machine.
pub fn anything_left(lab: &Lab) -> bool {
    !shell::netns_with_prefix(&lab.netns_prefix()).is_empty()
        || lab.run_dir().exists()
        || lab.data_dir().exists()
        || !lab_processes(lab).is_empty()
}

/// Pids of the live processes inside the namespace file `netns`.
pub fn pids_in_netns(netns: &str) -> Vec<i32> {
    let Ok(m) = std::fs::metadata(netns) else {
        return Vec::new();
    };
    let id = (m.dev(), m.ino());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let same = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| (m.dev(), m.ino()) == id)
            .unwrap_or(false);
        if same && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILLs every process inside the namespace file `netns` and waits (up to 2 s) until
/// they are gone.
pub fn kill_in_netns(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in_netns(netns);
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
