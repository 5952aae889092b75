#![allow(dead_code)] // each test binary uses a different part of this module
//! Namespaces for tier-1 tests: nodes joined by a veth underlay, pods wired like
//! flatnet-cni wires them, a TCP name server and a client. Every namespace is removed on drop.
//! Needs root and `ip`; [`skip`] prints SKIPPED, or fails under `REQUIRE_NETNS=1`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Option<Ns> {
        let name = format!(
            "flp-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {
                let ns = Ns { name };
                ns.ip(&["link", "set", "lo", "up"]);
                Some(ns)
            }
            Ok(o) => skip(&format!(
                "ip netns add: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => skip(&format!("cannot run ip: {e}")),
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        if text.trim().is_empty() {
            vec![]
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// `ip netns exec NAME cmd...`; the exit status.
    pub fn exec_ok(&self, cmd: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        datapath::NetNs::open(self.path()).unwrap().run(f).unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn skip(why: &str) -> Option<Ns> {
    if std::env::var("REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("REQUIRE_NETNS=1 but network namespaces are not available: {why}");
    }
    eprintln!(
        "SKIPPED: network namespaces not available ({why}); REQUIRE_NETNS=1 makes this a failure"
    );
    None
}

/// Two nodes on one underlay link: `eth0` with 10.99.<net>.1/24 and .2/24.
pub struct Nodes {
    pub a: Ns,
    pub b: Ns,
}

pub fn two_nodes(net: u8) -> Option<Nodes> {
    let a = Ns::new("a")?;
    let b = Ns::new("b")?;
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
    ]);
    for (ns, host) in [(&a, 1), (&b, 2)] {
        ns.ip(&[
            "addr",
            "add",
            &format!("10.99.{net}.{host}/24"),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    Some(Nodes { a, b })
}

/// A pod namespace behind `node` with `ip`/32, wired like flatnet-cni does (veth, /32 route on
/// the node, link-local default gateway, static neighbours).
pub fn pod(node: &Ns, ip: &str, veth: &str) -> Ns {
    let p = Ns::new("pod").unwrap();
    node.ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &p.name,
    ]);
    node.ip(&["link", "set", veth, "up"]);
    p.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    p.ip(&["link", "set", "eth0", "up"]);
    p.ip(&[
        "route",
        "add",
        "169.254.1.1/32",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    p.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    let mac = |ns: &Ns, dev: &str| {
        ns.json(&["link", "show", dev])[0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    p.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        &mac(node, veth),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    node.ip(&[
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        veth,
        "scope",
        "link",
    ]);
    node.ip(&[
        "neigh",
        "replace",
        ip,
        "lladdr",
        &mac(&p, "eth0"),
        "dev",
        veth,
        "nud",
        "permanent",
    ]);
    p
}

/// A TCP server in `ns` on `port` that answers every connection with `name` and closes.
pub fn name_server(ns: &Ns, port: u16, name: &'static str) -> Arc<AtomicBool> {
    let listener = ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(name.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    stop
}

/// Connects from `ns` to `addr` and reads the answer; Err(kind) when it fails.
pub fn ask(ns: &Ns, addr: &str) -> Result<String, std::io::ErrorKind> {
    ask_within(ns, addr, Duration::from_secs(2))
}

/// [`ask`] with a connect timeout.
pub fn ask_within(ns: &Ns, addr: &str, timeout: Duration) -> Result<String, std::io::ErrorKind> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, timeout))
        .map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    Ok(out)
}
