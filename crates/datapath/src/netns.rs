//! Network namespaces: open one by path and run code inside it on the calling thread.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Why a network namespace could not be opened, entered or left.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// `setns` into the namespace failed (needs `CAP_SYS_ADMIN`).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// The errno of `setns`.
        source: nix::Error,
    },
    /// `setns` back to the thread's original namespace failed; the thread is left in the other one.
    #[error("cannot return to the original network namespace: {0}")]
    Return(nix::Error),
}

/// An open network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace file at `path` (it is entered only by [`NetNs::run`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file's descriptor (for `setns` or `IFLA_NET_NS_FD`); valid while `self`
    /// lives.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` with the calling thread inside this namespace and returns to the original one
    /// afterwards. Sockets created inside `f` stay bound to this namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let origin = Self::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let out = f();
        setns(origin.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Return)?;
        Ok(out)
    }

    /// Moves the calling thread into this namespace for good (for a process about to exec).
    pub fn enter(&self) -> Result<(), NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })
    }
}

/// Gives the calling thread a mount namespace of its own in which `/sys` is a fresh sysfs of
/// the network namespace it is in, as `ip netns exec` does, so `/sys/class/net` lists that
/// namespace's links. Call after entering the network namespace, in a process about to exec.
///
/// Allocates nothing, so it may run between fork and exec of a multi-threaded parent.
pub fn remount_sys() -> nix::Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    // Keep our mounts from propagating back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    match umount2("/sys", MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(e),
    }
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
}
