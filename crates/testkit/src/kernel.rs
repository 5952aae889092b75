//! What the kernel of a test namespace holds and does: the routes one protocol owns, and the
//! changes `ip monitor` reports while something runs.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::TestNs;

/// `(dst, gateway, dev, onlink)` of the routes in `ns` with routing protocol `protocol`
/// (`ip -j route show proto N`), sorted; the gateway is `""` for a route without one.
pub fn kernel_routes(ns: &TestNs, protocol: u8) -> Vec<(String, String, String, bool)> {
    let mut out: Vec<_> = ns
        .ip_json(&["route", "show", "proto", &protocol.to_string()])
        .iter()
        .map(|r| {
            let flags = r["flags"].as_array().cloned().unwrap_or_default();
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or_default().to_string(),
                flags.iter().any(|f| f == "onlink"),
            )
        })
        .collect();
    out.sort();
    out
}

/// `ip -n NAME monitor route neigh link address` while it lives: what changed in a namespace.
/// Killed on drop.
#[derive(Debug)]
pub struct IpMonitor {
    child: Child,
    about: Vec<String>,
}

impl IpMonitor {
    /// Starts watching `ns`; [`IpMonitor::stop`] keeps the lines that mention any of `about`.
    /// Returns once `ip` has had time to subscribe (300 ms), so later changes are seen.
    pub fn start(ns: &TestNs, about: &[&str]) -> IpMonitor {
        let child = Command::new("ip")
            .args([
                "-n",
                ns.name(),
                "monitor",
                "route",
                "neigh",
                "link",
                "address",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ip monitor: {e}"));
        std::thread::sleep(Duration::from_millis(300)); // subscribed before anything happens
        IpMonitor {
            child,
            about: about.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Waits 300 ms for late events, stops `ip monitor` and returns the lines that mention
    /// one of `about`, except those about IPv6 link-local addresses (`fe80::`): the
    /// autoconfiguration of a new device finishes on its own time.
    pub fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .unwrap_or_else(|e| panic!("read ip monitor: {e}"));
        }
        let _ = self.child.wait();
        out.lines()
            .filter(|l| self.about.iter().any(|a| l.contains(a.as_str())))
            .filter(|l| !l.contains("fe80::"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for IpMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
