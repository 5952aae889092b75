//! Test helpers shared by the workspace's tests: the one reading of `REQUIRE_NETNS`, network
//! namespaces that remove themselves, and the wiring and probes that namespace tests share.
//!
//! A test that needs something the machine may lack (root, `ip`, etcd, podman) either gets it
//! or calls [`skip_or_fail`]: it prints `SKIPPED <test>: <why>` and returns, or, under
//! `REQUIRE_NETNS=1` (CI), fails. Never a silent pass.
//!
//! ```no_run
//! let Some(ns) = testkit::netns!("dp") else { return };
//! ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
//! let out = ns.exec(&["ip", "-br", "link"]);
//! # let _ = out;
//! ```
//!
//! # Layout
//! - `lib.rs` — [`skip_or_fail`] (the only reader of `REQUIRE_NETNS`), [`test_name!`],
//!   [`netns!`]
//! - `netns.rs` — [`TestNs`]: a named namespace (`/run/netns/NAME`, loopback up) removed on
//!   drop, commands inside it (`ip -n`, `nsenter --net=`), code inside it ([`TestNs::run`])
//! - `wire.rs` — veth pairs, two nodes on an underlay, a pod wired like flatnet-cni wires it
//! - `probe.rs` — TCP servers (one naming itself), a client asking them and an HTTP GET,
//!   inside namespaces
//! - `kernel.rs` — what a namespace's kernel holds and reports: [`kernel_routes`] of one
//!   protocol, [`IpMonitor`]
//! - `wait.rs` — [`within`]: poll a condition with a limit
//! - `tempdir.rs` — [`TempDir`]: a directory removed on drop
//! - `etcd.rs` — [`start_etcd`]: a real etcd, or a skip (or failure) saying why not
//!
//! # Must not
//! Touch the namespace the test process runs in (every command names one of the test's own
//! namespaces), or be anything but a dev-dependency.

mod etcd;
mod kernel;
mod netns;
mod probe;
mod tempdir;
mod wait;
mod wire;

pub use etcd::start_etcd;
pub use kernel::{IpMonitor, kernel_routes};
pub use netns::{NsError, TestNs};
pub use probe::{ask, ask_within, http_get, name_server, tcp_server};
pub use tempdir::TempDir;
pub use wait::within;
pub use wire::{Nodes, pod, two_nodes, veth_pair};

/// Whether `REQUIRE_NETNS=1`: tests that cannot run must fail instead of skipping.
pub fn required() -> bool {
    std::env::var_os("REQUIRE_NETNS").is_some_and(|v| v == "1")
}

/// Explains why `test` cannot run here: panics under `REQUIRE_NETNS=1`, else prints
/// `SKIPPED <test>: <why> (REQUIRE_NETNS=1 makes this a failure)` on stderr. The caller then
/// returns without asserting anything.
pub fn skip_or_fail(test: &str, why: &str) {
    if required() {
        panic!("{test}: cannot run ({why}) but REQUIRE_NETNS=1");
    }
    eprintln!("SKIPPED {test}: {why} (REQUIRE_NETNS=1 makes this a failure)");
}

/// The running test's name as libtest names its thread (`module::test_name`), or `"this test"`
/// on a thread without a name. [`test_name!`] is exact where a macro can be used.
pub fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// Whether the process runs as root (namespaces, nft and etcd's tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Strips `path::to::test_fn::__here` (the name of a function nested in a test, as
/// [`std::any::type_name`] spells it) down to `test_fn`; async bodies add `{{closure}}`.
#[doc(hidden)]
pub fn __test_fn_name(nested: &'static str) -> &'static str {
    nested
        .trim_end_matches("::__here")
        .rsplit("::")
        .find(|s| *s != "{{closure}}")
        .unwrap_or(nested)
}

/// The name of the enclosing function (the test), as a `&'static str`.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn __here() {}
        fn __name_of<T>(_: T) -> &'static str {
            ::std::any::type_name::<T>()
        }
        $crate::__test_fn_name(__name_of(__here))
    }};
}

/// A fresh [`TestNs`] named `<prefix>-<pid>-<n>`, or `None` after [`skip_or_fail`] names the
/// enclosing test and why namespaces cannot be made (netavark's `test_setup!` shape):
///
/// ```no_run
/// let Some(ns) = testkit::netns!("dp") else { return };
/// # let _ = ns;
/// ```
#[macro_export]
macro_rules! netns {
    ($prefix:expr) => {
        $crate::TestNs::for_test($crate::test_name!(), $prefix)
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_name_is_the_enclosing_function() {
        assert_eq!(test_name!(), "test_name_is_the_enclosing_function");
        let in_closure = || test_name!();
        assert_eq!(in_closure(), "test_name_is_the_enclosing_function");
    }
}
