//! Helpers for the tests of this crate and of crates that use a store: a temporary directory
//! removed on drop, and a real etcd that a test either gets or explains away with
//! [`testkit::skip_or_fail`] (a failure under `REQUIRE_NETNS=1`, a printed skip otherwise).

use std::path::{Path, PathBuf};

use crate::EtcdProcess;

/// A directory under the temp dir, removed on drop (also when the test panics).
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<tmp>/flatnet-<name>-<pid>-<nanos>`; panics if it cannot be made (tests only).
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("flatnet-{name}-{}-{nanos}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("create {}: {e}", path.display());
        }
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts etcd in `dir`, or explains why not through [`testkit::skip_or_fail`] (named after
/// the running test): a failure under `REQUIRE_NETNS=1`, else a printed `SKIPPED` and `None`.
pub fn start_etcd(dir: &Path) -> Option<EtcdProcess> {
    match EtcdProcess::start(dir) {
        Ok(process) => Some(process),
        Err(e) => {
            testkit::skip_or_fail(
                &testkit::current_test(),
                &format!(
                    "etcd ({}) cannot start: {e}",
                    crate::etcd_binary().display()
                ),
            );
            None
        }
    }
}
