//! [`TestNs`]: a named network namespace of one test, removed on every path.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use crate::{current_test, is_root, skip_or_fail};

/// Numbers the namespaces of this process, so that names never repeat within a run.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why a namespace could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// Creating namespaces needs root.
    #[error("needs root to create network namespaces")]
    NotRoot,
    /// The tool could not be started (not installed, not on PATH).
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// The program, e.g. `ip`.
        tool: &'static str,
        /// What starting it reported.
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("{command}: {stderr}")]
    Failed {
        /// The command line, e.g. `ip netns add flt-1-0`.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// A named network namespace (`/run/netns/NAME`, loopback up) owned by one test and deleted
/// when dropped, also when the test panics. Commands aimed at it name it (`ip -n NAME`,
/// `nsenter --net=/run/netns/NAME`); nothing runs in the test process's own namespace.
#[derive(Debug)]
pub struct TestNs {
    name: String,
    deleted: bool,
}

impl TestNs {
    /// Makes `<prefix>-<pid>-<n>`, or returns `None` after [`skip_or_fail`] (named after the
    /// running test's thread) says why not. Prefer [`netns!`](crate::netns), which names the
    /// test exactly.
    pub fn new(prefix: &str) -> Option<TestNs> {
        Self::for_test(&current_test(), prefix)
    }

    /// [`TestNs::new`] for the test named `test` (what the skip notice names).
    pub fn for_test(test: &str, prefix: &str) -> Option<TestNs> {
        match Self::create(prefix) {
            Ok(ns) => Some(ns),
            Err(e) => {
                skip_or_fail(test, &format!("network namespaces not available: {e}"));
                None
            }
        }
    }

    /// Makes `<prefix>-<pid>-<n>` with its loopback up, or says why it cannot.
    pub fn create(prefix: &str) -> Result<TestNs, NsError> {
        if !is_root() {
            return Err(NsError::NotRoot);
        }
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        let ns = TestNs {
            name,
            deleted: false,
        };
        // On error `ns` is dropped, which deletes the namespace again.
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file that holds the namespace.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Deletes the namespace now (as a runtime does when a pod goes away), reporting a
    /// failure; dropping afterwards does nothing. Deleting twice is fine.
    pub fn delete(&mut self) -> Result<(), NsError> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        run_ip(&["netns", "delete", &self.name]).map(drop)
    }

    /// `ip -n NAME ARGS...`, which must succeed (else the test panics); its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip -j -n NAME ARGS...` parsed: one JSON object per line of `ip`'s answer (empty when
    /// it printed nothing). Panics when `ip` fails.
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "ip -j -n {} {args:?}: not a JSON list ({e}): {text}",
                self.name
            )
        })
    }

    /// A command that runs `argv` in this namespace: `nsenter --net=/run/netns/NAME argv...`.
    /// Only the network namespace changes (not `ip netns exec`, which also remounts `/sys`).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .args(argv);
        cmd
    }

    /// Runs `argv` in this namespace and returns its output (panics if `nsenter` cannot
    /// start).
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// Runs `argv` in this namespace, output discarded; whether it exited 0.
    pub fn exec_ok(&self, argv: &[&str]) -> bool {
        self.command(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` on a thread that joined this namespace and returns its result: sockets `f`
    /// makes live here, and so do threads it starts. The calling thread stays where it is.
    /// A panic in `f` is the caller's panic.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        std::thread::scope(|s| {
            let joined = s
                .spawn(move || {
                    // SAFETY: setns(2) with a descriptor that stays open for the call; it
                    // changes the namespace of this (new, scoped) thread only.
                    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join();
            joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = self.delete();
    }
}

/// `ip ARGS...`; its stdout when it exits 0.
fn run_ip(args: &[&str]) -> Result<String, NsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NsError::Spawn { tool: "ip", source })?;
    if !out.status.success() {
        return Err(NsError::Failed {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    #[test]
    fn a_namespace_is_unique_has_loopback_up_and_is_gone_after_drop() {
        let Some(a) = crate::netns!("ftk") else {
            return;
        };
        let Some(b) = crate::netns!("ftk") else {
            return;
        };
        assert_ne!(a.name(), b.name());
        assert!(a.path().exists());
        let lo = a.ip_json(&["link", "show", "lo"]);
        assert!(
            lo[0]["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "UP")),
            "lo is up: {lo:?}"
        );
        let path = a.path();
        drop(a);
        assert!(!path.exists(), "{} remains", path.display());
    }

    #[test]
    fn a_panicking_test_still_removes_its_namespace() {
        let Some(ns) = crate::netns!("ftk") else {
            return;
        };
        let path = ns.path();
        let r = std::panic::catch_unwind(move || {
            let _ns = ns;
            panic!("the test fails");
        });
        assert!(r.is_err());
        assert!(!path.exists(), "{} remains", path.display());
    }

    #[test]
    fn run_and_exec_are_inside_the_namespace() {
        let Some(ns) = crate::netns!("ftk") else {
            return;
        };
        ns.ip(&[
            "link", "add", "ftk0", "type", "veth", "peer", "name", "ftk1",
        ]);
        let out = ns.exec(&["ip", "-br", "link"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("ftk0"));
        let inside = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        assert!(ns.exec_ok(&["true"]));
        assert!(!ns.exec_ok(&["false"]));
    }

    #[test]
    fn delete_reports_once_and_then_is_a_no_op() {
        let Some(mut ns) = crate::netns!("ftk") else {
            return;
        };
        ns.delete().unwrap();
        assert!(!ns.path().exists());
        ns.delete().unwrap();
    }
}
