//! A real etcd for a test, or the reason there is none.

use std::path::Path;

use store::EtcdProcess;

use crate::{current_test, skip_or_fail};

/// Starts etcd in `dir`, or explains why not through [`skip_or_fail`] (named after the running
/// test): a failure under `REQUIRE_NETNS=1`, else a printed `SKIPPED` and `None`.
pub fn start_etcd(dir: &Path) -> Option<EtcdProcess> {
    match EtcdProcess::start(dir) {
        Ok(process) => Some(process),
        Err(e) => {
            skip_or_fail(
                &current_test(),
                &format!(
                    "etcd ({}) cannot start: {e}",
                    store::etcd_binary().display()
                ),
            );
            None
        }
    }
}
