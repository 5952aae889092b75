//! Harness for the tier-1 tests: namespaces made per test (deleted on every path by `Drop`),
//! the built plugin run *inside* a namespace acting as the node, kernel state read back with
//! `ip -j` / `tc -j`, and the IPAM records read from the test's own data directory.
//!
//! Nothing here touches the namespace the test process runs in: every command that reads or
//! changes network state names one of the test's namespaces (`ip -n`, `nsenter --net=`). The
//! namespaces and the skip-or-fail decision are `testkit`'s.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{NsError, TestNs};

pub const BIN: &str = env!("CARGO_BIN_EXE_flatnet-cni");
/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";
pub const NETWORK: &str = "fnet";
pub const SUBNET: &str = "10.244.1.0/24";
pub const IFNAME: &str = "eth0";
/// Upper bound for one plugin process; a hang fails the test instead of blocking it.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

pub use testkit::skip_or_fail;

/// One of the test's namespaces ([`testkit::TestNs`]: `/run/netns/NAME`, loopback up, deleted
/// on drop) with the views of its state these tests read.
pub struct Ns(TestNs);

impl Ns {
    /// `<prefix>-<pid>-<n>`, or why it cannot be made.
    pub fn create(prefix: &str) -> Result<Ns, NsError> {
        TestNs::create(prefix).map(Ns)
    }

    pub fn path(&self) -> String {
        self.0.path().display().to_string()
    }

    /// Deletes the namespace now (as a runtime does when a pod goes away before DEL).
    pub fn delete(&mut self) {
        let _ = self.0.delete();
    }

    /// `ip -j -n NS ARGS...` parsed; `[]` for an empty answer.
    pub fn ip(&self, args: &[&str]) -> Value {
        Value::Array(self.0.ip_json(args))
    }

    /// `tc -j -n NS ARGS...` parsed; `[]` for an empty answer.
    pub fn tc(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-n", self.0.name()];
        full.extend_from_slice(args);
        json_of("tc", &full)
    }

    /// `ip -n NS ARGS...` for changes; panics when it fails.
    pub fn ip_do(&self, args: &[&str]) {
        self.0.ip(args);
    }

    /// Runs `argv` with the network namespace of this one (`nsenter --net=`).
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        self.0.exec(argv)
    }

    /// Link names in this namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip(&["link", "show"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        let all = self.ip(&["-d", "link", "show"]);
        all.as_array()?
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.link_names().iter().any(|n| n == name)
    }

    /// IPv4 addresses (`a.b.c.d/len`) on `dev`.
    pub fn ipv4_addrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip(&["-4", "addr", "show", "dev", dev]);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
            .collect()
    }

    pub fn sysctl(&self, key: &str) -> String {
        let out = self.exec(&["cat", &format!("/proc/sys/{key}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// One echo request answered within 2 s, tried up to 3 times.
    pub fn ping(&self, dst: &str) -> bool {
        (0..3).any(|_| {
            self.exec(&["ping", "-n", "-q", "-c", "1", "-W", "2", dst])
                .status
                .success()
        })
    }
}

fn json_of(prog: &str, args: &[&str]) -> Value {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return json!([]);
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{prog} {}: not JSON ({e}): {text}", args.join(" ")))
}

/// Output of one finished process.
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts exit 0 and returns self.
    pub fn ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "{} failed ({}): stdout {} stderr {}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("{}: stdout is not JSON ({e}): {:?}", self.what, self.stdout)
        })
    }

    /// Asserts exit 1 with a CNI error of `code` on stdout; returns the error object.
    pub fn cni_error(&self, code: u64) -> Value {
        assert_eq!(
            self.status.code(),
            Some(1),
            "{}: want exit 1, stdout {} stderr {}",
            self.what,
            self.stdout,
            self.stderr
        );
        let e = self.json();
        assert_eq!(
            e["code"].as_u64(),
            Some(code),
            "{}: want code {code}, got {e}",
            self.what
        );
        assert!(
            e["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: error without msg: {e}",
            self.what
        );
        e
    }
}

/// A process started with its stdin written and closed, its output read by two threads.
pub struct Proc {
    what: String,
    child: Child,
    out: JoinHandle<Vec<u8>>,
    err: JoinHandle<Vec<u8>>,
}

pub fn start(mut cmd: Command, stdin: &[u8], what: String) -> Proc {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Some(mut si) = child.stdin.take() {
        // A plugin that fails before reading stdin closes the pipe: not our error.
        let _ = si.write_all(stdin);
    }
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    Proc {
        what,
        child,
        out,
        err,
    }
}

impl Proc {
    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not finish within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let stdout = String::from_utf8_lossy(&self.out.join().unwrap_or_default())
            .trim()
            .to_string();
        let stderr = String::from_utf8_lossy(&self.err.join().unwrap_or_default())
            .trim()
            .to_string();
        Out {
            what: self.what,
            status,
            stdout,
            stderr,
        }
    }
}

/// Polls `f` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A pod: its own namespace and a container ID.
pub struct Pod {
    pub ns: Ns,
    pub cid: String,
}

impl Pod {
    pub fn path(&self) -> String {
        self.ns.path()
    }

    /// Name of the node end of this pod's veth.
    pub fn host_veth(&self) -> String {
        flatnet_cni::host_veth_name(&self.cid, IFNAME)
    }
}

/// One test's world: the node namespace, the IPAM data directory, and a name prefix for pods.
/// Drop order: the node namespace (and with it every node-side veth), then the directory.
pub struct Lab {
    pub test: &'static str,
    pub node: Ns,
    pub data_dir: PathBuf,
}

impl Lab {
    /// `None` (after printing SKIPPED) when namespaces cannot be made; panics under
    /// `REQUIRE_NETNS=1`.
    pub fn new(test: &'static str) -> Option<Lab> {
        let node = match Ns::create(&format!("fcni-{test}-node")) {
            Ok(ns) => ns,
            Err(e) => {
                skip_or_fail(test, &e.to_string());
                return None;
            }
        };
        let data_dir =
            std::env::temp_dir().join(format!("flatnet-cni-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        Some(Lab {
            test,
            node,
            data_dir,
        })
    }

    /// A fresh pod namespace; container ID `<tag>-<pid>`.
    pub fn pod(&self, tag: &str) -> Pod {
        let ns = Ns::create(&format!("fcni-{}-{tag}", self.test)).expect("create pod namespace");
        Pod {
            ns,
            cid: format!("{tag}-{}", std::process::id()),
        }
    }

    /// The plugin config flatnet reads (single-plugin form, as a runtime derives it).
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "flatnet-cni",
            "subnet": SUBNET,
            "dataDir": self.data_dir.to_str().expect("utf-8 temp dir"),
        })
    }

    /// Starts `bin` inside the node namespace with exactly `env` (plus PATH) and `stdin`.
    pub fn start_in_node(
        &self,
        bin: &str,
        env: &[(&str, String)],
        stdin: &[u8],
        what: String,
    ) -> Proc {
        start(self.node_command(&[], bin, env), stdin, what)
    }

    /// The command that runs `bin` inside the node namespace, under `wrapper` (e.g.
    /// `chrt --idle 0`), with exactly `env` (plus PATH).
    pub fn node_command(&self, wrapper: &[&str], bin: &str, env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node.path()))
            .args(wrapper)
            .arg(bin)
            .env_clear();
        cmd.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The standard environment of a per-attachment verb for `pod` (CNI_NETNS set).
    pub fn env(cmd: &str, pod: &Pod) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", pod.cid.clone()),
            ("CNI_NETNS", pod.path()),
            ("CNI_IFNAME", IFNAME.to_string()),
            ("CNI_PATH", REFERENCE_DIR.to_string()),
        ]
    }

    /// Runs flatnet-cni with `env` and `conf` on stdin, inside the node namespace.
    pub fn run(&self, env: &[(&str, String)], conf: &Value) -> Out {
        let what = format!(
            "flatnet-cni {}",
            env.iter()
                .find(|(k, _)| *k == "CNI_COMMAND")
                .map_or("", |(_, v)| v.as_str())
        );
        self.start_in_node(BIN, env, conf.to_string().as_bytes(), what)
            .wait(PLUGIN_TIMEOUT)
    }

    /// `cmd` for `pod` with `conf` (and the usual environment).
    pub fn cni(&self, cmd: &str, pod: &Pod, conf: &Value) -> Out {
        self.run(&Self::env(cmd, pod), conf)
    }

    /// ADD that must succeed; returns the result.
    pub fn add(&self, pod: &Pod, conf: &Value) -> Value {
        let out = self.cni("ADD", pod, conf);
        out.ok();
        out.json()
    }

    /// DEL that must succeed with no output.
    pub fn del(&self, pod: &Pod, conf: &Value) {
        let out = self.cni("DEL", pod, conf);
        out.ok();
        assert_eq!(out.stdout, "", "DEL prints nothing on success");
    }

    /// `conf` with `prevResult` set, as a runtime sends it for CHECK and DEL.
    pub fn with_prev(conf: &Value, prev: &Value) -> Value {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        c
    }

    /// The IPAM records: (ip, containerID, ifname), ordered by IP.
    pub fn records(&self) -> Vec<(Ipv4Addr, String, String)> {
        records_in(&self.data_dir.join(NETWORK))
    }

    /// The IP recorded for `pod`, if any.
    pub fn record_of(&self, pod: &Pod) -> Option<Ipv4Addr> {
        self.records()
            .into_iter()
            .find(|(_, c, i)| *c == pod.cid && i == IFNAME)
            .map(|(ip, _, _)| ip)
    }

    /// Node-side flatnet veths (`fl` + 12 hex) in the node namespace.
    pub fn node_veths(&self) -> Vec<String> {
        self.node
            .link_names()
            .into_iter()
            .filter(|n| n.starts_with("fl") && n.len() == 14)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.node.delete();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn records_in(dir: &Path) -> Vec<(Ipv4Addr, String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let mut lines = text.lines();
            Some((
                ip,
                lines.next()?.trim().to_string(),
                lines.next().unwrap_or("").trim().to_string(),
            ))
        })
        .collect();
    out.sort();
    out
}

/// The single IPv4 address (without prefix) of an ADD result.
pub fn result_ip(result: &Value) -> String {
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result without ips: {result}"));
    let addr = ips
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'));
    let addr = addr.unwrap_or_else(|| panic!("result without an IPv4 address: {result}"));
    addr.split('/').next().unwrap_or(addr).to_string()
}
