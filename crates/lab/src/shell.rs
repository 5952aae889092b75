//! Running host tools (`ip`) and processes inside a namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

/// Why a host command or a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The command could not be run at all.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line (or what was being opened).
        cmd: String,
        /// Why it could not be started, fed or waited for.
        source: std::io::Error,
    },
    /// The command ran and exited non-zero.
    #[error("{cmd} failed: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// A network namespace file could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: String,
        /// Why it could not be opened.
        source: std::io::Error,
    },
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; its stderr becomes the error.
pub fn run(cmd: &mut Command) -> Result<String, ShellError> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ShellError::Spawn {
            cmd: what.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ShellError::Failed {
            cmd: what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`
pub fn ip<I, S>(args: I) -> Result<String, ShellError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").args(args))
}

/// Runs many `ip` commands inside the namespace `netns` in one process
/// (`ip -n NETNS -batch -`), stopping at the first failure.
pub fn ip_batch_in(netns: &str, lines: &[String]) -> Result<(), ShellError> {
    use std::io::Write;
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ShellError::Spawn {
            cmd: "ip -batch -".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = lines.join("\n") + "\n";
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| ShellError::Spawn {
                cmd: "ip -batch -".into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ShellError::Spawn {
            cmd: "ip -batch -".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(ShellError::Failed {
            cmd: "ip -batch -".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Path of a named network namespace.
pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Whether the named network namespace exists (`/run/netns/NAME`).
pub fn netns_exists(name: &str) -> bool {
    Path::new(&netns_path(name)).exists()
}

/// Names of every named network namespace starting with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// Makes `cmd` start inside the network namespace file `netns` (the fd is opened now and
/// entered in the child between fork and exec). Returns the open file, which must outlive
/// the spawn.
pub fn in_netns(cmd: &mut Command, netns: &str) -> Result<File, ShellError> {
    let file = File::open(netns).map_err(|source| ShellError::Netns {
        path: netns.to_string(),
        source,
    })?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd that the
    // parent keeps open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let f = std::os::fd::BorrowedFd::borrow_raw(fd);
            setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(file)
}

/// Makes `cmd` a session leader, detached from the caller's terminal and process group, so it
/// outlives the CLI that started it, holding none of the caller's descriptors beyond stdio.
pub fn detach(cmd: &mut Command) {
    // SAFETY: setsid(2) and close_range(2) are async-signal-safe. close_range marks the
    // descriptors close-on-exec instead of closing them, so the pipe std uses to report a
    // failed exec keeps working.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Gives `cmd` its own `/sys` of the network namespace it starts in (register after
/// [`in_netns`]), as `ip netns exec` does.
pub fn own_sysfs(cmd: &mut Command) {
    // SAFETY: the closure runs in the single-threaded child between fork and exec and only
    // makes the unshare/mount/umount system calls.
    unsafe {
        cmd.pre_exec(|| datapath::remount_sys().map_err(std::io::Error::from));
    }
}

/// Opens `path` for appending (a daemon's log).
pub fn log_file(path: &Path) -> Result<File, ShellError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ShellError::Spawn {
            cmd: format!("open log {}", path.display()),
            source,
        })
}

/// Where a pod's resolver config is mounted.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Bind-mounts `file` over `/etc/resolv.conf` in the calling thread's mount namespace, which
/// must already be private ([`datapath::remount_sys`] makes it so). Allocates nothing.
pub fn bind_resolv_conf(file: &std::ffi::CStr) -> nix::Result<()> {
    nix::mount::mount(
        Some(file),
        RESOLV_CONF,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
}

/// Gives `cmd` `file` as its `/etc/resolv.conf` (register after [`own_sysfs`], which makes
/// the mount namespace private). The host's file is left alone; when the host has none, there
/// is nothing to mount over and the container keeps that.
pub fn own_resolv_conf(cmd: &mut Command, file: &Path) -> Result<(), ShellError> {
    if !Path::new(RESOLV_CONF).exists() {
        return Ok(());
    }
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).map_err(|_| {
        ShellError::Spawn {
            cmd: format!("resolv.conf {}", file.display()),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        }
    })?;
    // SAFETY: the closure runs in the single-threaded child between fork and exec and only
    // makes the mount system call on a string allocated before the fork.
    unsafe {
        cmd.pre_exec(move || bind_resolv_conf(&c).map_err(std::io::Error::from));
    }
    Ok(())
}
