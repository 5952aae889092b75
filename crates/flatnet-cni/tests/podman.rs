//! Tier 2 (design.md §5, §9): podman 4 with its CNI backend and runc wires two containers
//! through `flatnet-cni`; they get addresses from the configured subnet, reach each other
//! through the routed /32s, and removing a container releases its address.
//!
//! Nothing here touches the root network namespace, and nothing is left on the machine:
//! - podman runs inside a network namespace the test makes (a `testkit::TestNs`,
//!   `/run/netns/flatnet-podman-<pid>-<n>`), so the plugin's node-side veths, /32 routes and
//!   `ip_forward` land there;
//! - it also runs in a private mount namespace, kept alive by a holder process, with a tmpfs
//!   over `/run/netns` and over `/var/lib`: podman 4 hard-codes `/run/netns/netns-*` for the
//!   containers' namespaces and libcni its cache in `/var/lib/cni`, and both vanish with the
//!   mount namespace (as do the `shm` mounts podman makes for each container);
//! - storage, run root, tmp dir, locks (`lock_type = "file"`, not `/dev/shm`), events, the
//!   runc state (`runc --root`, through a wrapper), the conflist and the IPAM `dataDir` live
//!   in one temp dir; cgroups go under a unique `--cgroup-parent`, removed afterwards.
//!
//! The test fails when it cannot clean up, and checks afterwards that no process of its
//! podman remains (conmon included), no mount is left under its temp dir, and that the
//! namespace, temp dir and cgroups are gone. Without root, podman 4, runc, conmon, nsenter,
//! unshare, ip or a static busybox it prints SKIPPED, unless `REQUIRE_NETNS=1`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datapath::NetNs;
use datapath::netlink::Handle;
use ipnet::Ipv4Net;
use serde_json::Value;
use testkit::TestNs;

/// Every wait in this test ends by this.
const WAIT: Duration = Duration::from_secs(20);
/// The node's pod CIDR, as the conflist gives it (only ever used inside the test's namespace).
const SUBNET: &str = "10.77.0.0/24";
const MTU: u32 = 1400;
/// libcni in podman 4.3 speaks CNI up to 1.0.0; flatnet-cni accepts 0.3.0 to 1.1.0.
const CNI_VERSION: &str = "1.0.0";
/// Upper bound on each container's life, so even a SIGKILLed test leaves nothing running long.
const CONTAINER_LIFETIME_SECS: &str = "120";
/// What the containers run (busybox-static 1.35's `wget` crashes, so `nc` speaks HTTP).
const BUSYBOX_APPLETS: &str = "sh cat ls ip ping nc sleep httpd timeout";

#[test]
fn podman_containers_get_flatnet_ips_and_reach_each_other() {
    let started = Instant::now();
    let Some(busybox) = prerequisites() else {
        return;
    };
    let mut lab = match Lab::create(&busybox) {
        Ok(lab) => lab,
        Err(e) => return skip_or_fail(&format!("the podman lab cannot be set up: {e}")),
    };

    // Two containers: A serves a page naming itself, B only waits.
    let a = lab.run_container("a", "httpd -f -p 8080 -h /www");
    let b = lab.run_container("b", &format!("sleep {CONTAINER_LIFETIME_SECS}"));
    for c in [&a, &b] {
        assert_attached(&lab, c);
    }
    assert_ne!(a.ip, b.ip, "both containers got {}", a.ip);
    assert_eq!(
        lab.recorded_ips(),
        sorted(vec![a.ip, b.ip]),
        "IPAM records while both run"
    );

    // B fetches A's page by A's flatnet address (retried until httpd listens), and both ping.
    let get = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 8080",
        a.ip
    );
    let page = wait_for(&format!("B to get A's page from {}:8080", a.ip), || {
        lab.sh(&b, &get)
            .ok()
            .filter(|page| page.contains(&lab.token))
    });
    assert!(
        page.starts_with("HTTP/1.") && page.contains(" 200 "),
        "B's request got {page:?}"
    );
    for (from, to) in [(&b, &a), (&a, &b)] {
        let ping = format!("ping -c 1 -W 3 {}", to.ip);
        lab.sh(from, &ping)
            .unwrap_or_else(|e| panic!("{} cannot ping {}: {e}", from.name, to.name));
    }

    // Removing A releases its address and its route at once (the plugin leaves the veth to a
    // detached child) and leaves B alone.
    lab.podman(&["rm", "--force", "--time", "0", &a.id])
        .expect("podman rm A");
    assert_eq!(
        lab.recorded_ips(),
        vec![b.ip],
        "IPAM records after A is removed"
    );
    let node = lab.node_view();
    let a_route = Ipv4Net::from(a.ip);
    assert!(
        !node.routes.iter().any(|(dst, _)| *dst == a_route),
        "A's /32 route outlives A"
    );
    assert!(
        node.links.iter().any(|l| l.name == b.veth),
        "B's {} went with A",
        b.veth
    );
    wait_for(&format!("A's {} to go", a.veth), || {
        lab.node_view()
            .links
            .iter()
            .all(|l| l.name != a.veth)
            .then_some(())
    });

    lab.podman(&["rm", "--force", "--time", "0", &b.id])
        .expect("podman rm B");
    assert_eq!(
        lab.recorded_ips(),
        Vec::<Ipv4Addr>::new(),
        "IPAM records after both are removed"
    );
    wait_for("every fl* link to go", || {
        let links = lab.node_view().links;
        links
            .iter()
            .all(|l| !l.name.starts_with("fl"))
            .then_some(())
    });
    let containers = lab.podman(&["ps", "--all", "--quiet"]).expect("podman ps");
    assert_eq!(containers.trim(), "", "containers remain");

    // Tear down here, not only in Drop, so a failure to clean up fails the test.
    let (dir, netns, mnt_ns) = (lab.dir.clone(), lab.netns_path(), lab.mnt_ns.clone());
    let problems = lab.teardown();
    assert!(problems.is_empty(), "teardown: {problems:#?}");
    assert!(!netns.exists(), "namespace {} remains", netns.display());
    assert!(!dir.exists(), "{} remains", dir.display());
    assert_eq!(
        mounts_under(&dir),
        Vec::<String>::new(),
        "mounts under {}",
        dir.display()
    );
    assert_eq!(
        processes_in(&mnt_ns),
        Vec::<String>::new(),
        "processes of the test's podman remain"
    );
    for pid in [a.conmon_pid, b.conmon_pid].into_iter().flatten() {
        assert!(!alive(pid), "conmon {pid} is still running");
    }
    eprintln!("podman e2e took {:?}", started.elapsed());
}

/// What flatnet promises one attached container, checked from podman, the IPAM records,
/// inside the container and on the node side (the test's namespace).
fn assert_attached(lab: &Lab, c: &Container) {
    let subnet: Ipv4Net = SUBNET.parse().expect("SUBNET is a CIDR");
    let n = &c.name;
    assert!(subnet.contains(&c.ip), "{n} got {} outside {subnet}", c.ip);
    let first_host = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    let reserved = [subnet.network(), first_host, subnet.broadcast()];
    assert!(
        !reserved.contains(&c.ip),
        "{n} got the reserved address {}",
        c.ip
    );
    assert_eq!(c.prefix_len, 32, "{n}: pods get a /32");
    assert_eq!(c.gateway, flatnet_cni::GATEWAY.to_string(), "{n}: gateway");

    // The IPAM record is named after the IP and names the attachment.
    let path = lab.records_dir().join(c.ip.to_string());
    let record = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{n}: no IPAM record {}: {e}", path.display()));
    assert_eq!(
        record.trim_end(),
        format!("{}\neth0\n{}", c.id, c.ip),
        "{n}: IPAM record {}",
        c.ip
    );

    // Inside: eth0 has the MAC podman reports and the configured MTU.
    let eth0 = lab.sh(c, "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu");
    let eth0 = eth0.unwrap_or_else(|e| panic!("{e}"));
    let want = [c.mac.clone(), MTU.to_string()];
    assert_eq!(
        eth0.split_whitespace().collect::<Vec<_>>(),
        want,
        "{n}: eth0 MAC and MTU"
    );

    // Node side: the veth is up with the MTU and carries the /32 route.
    let node = lab.node_view();
    let veth = &c.veth;
    let link = node.links.iter().find(|l| l.name == *veth);
    let link = link.unwrap_or_else(|| panic!("{n}: no node-side {veth}"));
    assert!(link.up, "{n}: {veth} is down");
    assert_eq!(link.mtu, Some(MTU), "{n}: {veth} MTU");
    let route = (Ipv4Net::from(c.ip), link.index);
    assert!(
        node.routes.contains(&route),
        "{n}: no route {}/32 dev {veth}",
        c.ip
    );
}

// ---------------------------------------------------------------------------------------------
// Prerequisites

/// The static busybox to build root filesystems from, or None (after SKIPPED) when the test
/// cannot run here.
fn prerequisites() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        skip_or_fail("the podman e2e test needs root");
        return None;
    }
    for tool in [
        "podman", "conmon", "runc", "nsenter", "unshare", "ip", "mount",
    ] {
        if which(tool).is_none() {
            skip_or_fail(&format!("{tool} is not installed"));
            return None;
        }
    }
    let version = match run_with_timeout(
        Command::new("podman").arg("--version"),
        "podman --version",
        &std::env::temp_dir(),
    ) {
        Ok(v) => v.trim().to_string(),
        Err(e) => {
            skip_or_fail(&e);
            return None;
        }
    };
    // Podman 4 is the last with a CNI backend (5 has netavark only).
    if !version
        .rsplit(' ')
        .next()
        .is_some_and(|v| v.starts_with("4."))
    {
        skip_or_fail(&format!("{version} is not podman 4 (the CNI backend)"));
        return None;
    }
    eprintln!("using {version}");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    match busybox {
        Some(b) if is_static_elf(&b) => Some(b),
        Some(b) => {
            skip_or_fail(&format!(
                "{} is dynamically linked (install busybox-static)",
                b.display()
            ));
            None
        }
        None => {
            skip_or_fail("busybox is not installed (install busybox-static)");
            None
        }
    }
}

/// Skips the test with a notice, or fails it under `REQUIRE_NETNS=1` (testkit decides).
fn skip_or_fail(why: &str) {
    testkit::skip_or_fail(
        "podman_containers_get_flatnet_ips_and_reach_each_other",
        why,
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A 64-bit ELF without a PT_INTERP program header: it runs in an empty root filesystem.
fn is_static_elf(path: &Path) -> bool {
    let Ok(elf) = fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let at = phoff as usize + i * phentsize;
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    })
}

// ---------------------------------------------------------------------------------------------
// The lab: a network namespace, a private mount namespace and podman's private state

/// What podman reports about one container.
struct Container {
    name: String,
    id: String,
    /// The node end of its veth, as flatnet-cni names it.
    veth: String,
    ip: Ipv4Addr,
    prefix_len: u64,
    gateway: String,
    mac: String,
    conmon_pid: Option<i32>,
}

/// What the test's network namespace holds: its links, and its routes as (dst, oif).
struct NodeView {
    links: Vec<datapath::netlink::Link>,
    routes: Vec<(Ipv4Net, u32)>,
}

/// Keeps the private mount namespace alive; it exits when its stdin closes.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Everything the test made; [`Lab::teardown`] (or Drop, on panics) removes all of it.
struct Lab {
    /// Test name + pid: the namespace, network, cgroup parent and temp dir are named after it.
    name: String,
    dir: PathBuf,
    /// The network namespace podman runs in; `None` until made and after teardown.
    netns: Option<TestNs>,
    network: String,
    /// A string only container A serves, so B's answer provably comes from A.
    token: String,
    holder: Option<Holder>,
    /// `mnt:[inode]` of the private mount namespace.
    mnt_ns: String,
    torn_down: bool,
}

impl Lab {
    fn create(busybox: &Path) -> Result<Lab, String> {
        let name = format!("flatnet-podman-{}", std::process::id());
        let mut lab = Lab {
            dir: std::env::temp_dir().join(&name),
            netns: None,
            network: name.clone(),
            token: format!("served by {name}-a"),
            name,
            holder: None,
            mnt_ns: String::new(),
            torn_down: false,
        };
        // On error, dropping `lab` removes what was made so far.
        lab.write_files(busybox)?;
        lab.netns = Some(TestNs::create("flatnet-podman").map_err(|e| e.to_string())?);
        lab.start_holder()?;
        Ok(lab)
    }

    fn write_files(&self, busybox: &Path) -> Result<(), String> {
        let d = &self.dir;
        let err = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", d.display());
        if d.exists() {
            fs::remove_dir_all(d).map_err(|e| err("removing a stale lab", e))?;
        }
        for sub in [
            "cni", "data", "storage", "runroot", "tmp", "xdg", "runc", "bin", "log",
        ] {
            fs::create_dir_all(d.join(sub)).map_err(|e| err(sub, e))?;
        }
        for c in ["a", "b"] {
            let root = d.join(format!("rootfs-{c}"));
            for sub in ["bin", "dev", "etc", "proc", "sys", "tmp", "www"] {
                fs::create_dir_all(root.join(sub)).map_err(|e| err("rootfs", e))?;
            }
            fs::copy(busybox, root.join("bin/busybox")).map_err(|e| err("copying busybox", e))?;
            for applet in BUSYBOX_APPLETS.split_whitespace() {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                    .map_err(|e| err("rootfs", e))?;
            }
        }
        fs::write(
            d.join("rootfs-a/www/index.html"),
            format!("{}\n", self.token),
        )
        .map_err(|e| err("index.html", e))?;

        // runc keeps its state in /run/runc unless told otherwise, on every call.
        let runc = which("runc").ok_or("runc vanished")?;
        let wrapper = d.join("bin/runc");
        let script = format!(
            "#!/bin/sh\nexec '{}' --root '{}' \"$@\"\n",
            runc.display(),
            d.join("runc").display()
        );
        fs::write(&wrapper, script).map_err(|e| err("runc wrapper", e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .map_err(|e| err("runc wrapper", e))?;

        let plugin = Path::new(env!("CARGO_BIN_EXE_flatnet-cni"));
        let plugin_dir = plugin
            .parent()
            .ok_or("the plugin binary has no directory")?;
        let plugin_type = plugin
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("the plugin binary has no name")?;
        let conflist = serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": self.network,
            "plugins": [{ "type": plugin_type, "subnet": SUBNET, "dataDir": d.join("data"), "mtu": MTU }],
        });
        fs::write(
            d.join("cni").join(format!("{}.conflist", self.network)),
            conflist.to_string(),
        )
        .map_err(|e| err("conflist", e))?;

        // Read by every podman process, including the `container cleanup` conmon starts
        // (conmon passes CONTAINERS_CONF on, not the storage or registries variables; the
        // exit command carries the storage flags itself).
        let containers_conf = format!(
            r#"[network]
network_backend = "cni"
cni_plugin_dirs = [{plugin_dir:?}, "/usr/lib/cni"]
network_config_dir = {cni:?}

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
runtime = "runc"
tmp_dir = {tmp:?}

[engine.runtimes]
runc = [{wrapper:?}]
"#,
            cni = d.join("cni"),
            tmp = d.join("tmp"),
        );
        fs::write(d.join("containers.conf"), containers_conf)
            .map_err(|e| err("containers.conf", e))?;
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            d.join("storage"),
            d.join("runroot")
        );
        fs::write(d.join("storage.conf"), storage_conf).map_err(|e| err("storage.conf", e))?;
        fs::write(d.join("registries.conf"), "").map_err(|e| err("registries.conf", e))?;
        Ok(())
    }

    /// Starts the process that holds the private mount namespace (inside the test's network
    /// namespace) and waits for its tmpfs mounts.
    fn start_holder(&mut self) -> Result<(), String> {
        let script = "mount -t tmpfs -o mode=0755 flatnet-podman /run/netns \
                      && mount -t tmpfs -o mode=0755 flatnet-podman /var/lib \
                      && echo ready && exec cat >/dev/null";
        let stderr =
            fs::File::create(self.dir.join("log/holder.err")).map_err(|e| e.to_string())?;
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start the mount namespace holder: {e}"))?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        self.holder = Some(Holder { child, stdin });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(WAIT)
            .map_err(|_| format!("the mount namespace holder is not ready within {WAIT:?}"))?;
        if line.trim() != "ready" {
            let log = fs::read_to_string(self.dir.join("log/holder.err")).unwrap_or_default();
            return Err(format!("the mount namespace holder failed: {}", log.trim()));
        }
        // nsenter and unshare exec (no fork), so the child is the holder itself.
        let pid = self.holder_pid().ok_or("the holder has no pid")?;
        self.mnt_ns = fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .map_err(|e| e.to_string())?
            .display()
            .to_string();
        let ours = fs::read_link("/proc/self/ns/mnt")
            .map_err(|e| e.to_string())?
            .display()
            .to_string();
        if self.mnt_ns == ours {
            return Err("the holder shares the test's mount namespace".into());
        }
        Ok(())
    }

    fn holder_pid(&self) -> Option<u32> {
        self.holder.as_ref().map(|h| h.child.id())
    }

    /// One podman command inside the test's network namespace and private mount namespace.
    fn podman(&self, args: &[&str]) -> Result<String, String> {
        let pid = self
            .holder_pid()
            .ok_or("the mount namespace holder is gone")?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &pid.to_string(), "--mount", "--net", "podman"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("XDG_RUNTIME_DIR", self.dir.join("xdg"))
            .env("TMPDIR", self.dir.join("tmp"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION");
        run_with_timeout(
            &mut cmd,
            &format!("podman {}", args.join(" ")),
            &self.dir.join("log"),
        )
    }

    /// Runs container `c` detached from its own root filesystem, its `command` (a busybox
    /// shell line) bounded in time, and returns what podman reports about it.
    fn run_container(&self, c: &str, command: &str) -> Container {
        let name = format!("{}-{c}", self.name);
        let rootfs = self.dir.join(format!("rootfs-{c}"));
        let rootfs = rootfs.to_str().expect("temp dir paths are UTF-8");
        let cgroup_parent = format!("/{}", self.name);
        let limited = format!("exec timeout {CONTAINER_LIFETIME_SECS} {command}");
        // podman asks for nofile=1048576 by default; without CAP_SYS_RESOURCE (dropped on some
        // CI machines) runc may not raise limits above the caller's hard limit, hence these.
        #[rustfmt::skip]
        let args = [
            "run", "--detach", "--name", &name, "--hostname", c, "--network", &self.network,
            "--cgroup-parent", &cgroup_parent,
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--rootfs", rootfs, "/bin/busybox", "sh", "-c", &limited,
        ];
        let id = self
            .podman(&args)
            .unwrap_or_else(|e| panic!("starting container {c}: {e}"));
        self.inspect(id.trim())
    }

    fn inspect(&self, id: &str) -> Container {
        let out = self
            .podman(&["inspect", "--type", "container", id])
            .expect("podman inspect");
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("podman inspect {id}: {e}: {out}"));
        let c = &v[0];
        let net = &c["NetworkSettings"]["Networks"][&self.network];
        let field = |k: &str| {
            let v = net[k].as_str();
            v.unwrap_or_else(|| panic!("inspect {id}: no {k} on {}: {net}", self.network))
        };
        let id = c["Id"].as_str().expect("inspect has Id").to_string();
        Container {
            name: c["Name"].as_str().unwrap_or(&id).to_string(),
            veth: flatnet_cni::host_veth_name(&id, "eth0"),
            ip: field("IPAddress")
                .parse()
                .unwrap_or_else(|e| panic!("inspect {id}: IPAddress: {e}")),
            prefix_len: net["IPPrefixLen"].as_u64().unwrap_or_default(),
            gateway: field("Gateway").to_string(),
            mac: field("MacAddress").to_string(),
            conmon_pid: c["State"]["ConmonPid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok()),
            id,
        }
    }

    /// Runs a busybox shell line in container `c`: Ok(stdout) when it succeeds.
    fn sh(&self, c: &Container, script: &str) -> Result<String, String> {
        self.podman(&["exec", &c.id, "/bin/busybox", "sh", "-c", script])
    }

    fn node_view(&self) -> NodeView {
        let ns = NetNs::open(self.netns_path()).expect("open the test's namespace");
        let mut h = Handle::in_netns(&ns).expect("netlink in the test's namespace");
        let links = h.links().expect("links");
        let routes = h
            .routes()
            .expect("routes")
            .into_iter()
            .filter_map(|r| Some((r.dst, r.oif?)))
            .collect();
        NodeView { links, routes }
    }

    /// The plugin's IPAM directory for the test's network.
    fn records_dir(&self) -> PathBuf {
        self.dir.join("data").join(&self.network)
    }

    /// The IPs the plugin's IPAM holds: the files of its network directory named after an IP.
    fn recorded_ips(&self) -> Vec<Ipv4Addr> {
        let dir = self.records_dir();
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        sorted(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect(),
        )
    }

    /// `/run/netns/NAME` of the lab's network namespace (made first, removed last).
    fn netns_path(&self) -> PathBuf {
        self.netns
            .as_ref()
            .map(TestNs::path)
            .expect("the lab's namespace exists from create to teardown")
    }

    /// Removes everything the lab made, going on after errors; returns what went wrong.
    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if self.holder.is_some()
            && let Err(e) = self.podman(&["rm", "--all", "--force", "--time", "0"])
        {
            problems.push(e);
        }
        if let Some(mut h) = self.holder.take() {
            drop(h.stdin.take()); // EOF: the holder's `cat` ends
            let deadline = Instant::now() + WAIT;
            loop {
                match h.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        problems.push("the mount namespace holder did not exit; killed".into());
                        let _ = h.child.kill();
                        let _ = h.child.wait();
                        break;
                    }
                }
            }
        }
        if !self.mnt_ns.is_empty() {
            // conmon and `podman container cleanup` may still be finishing.
            let deadline = Instant::now() + WAIT;
            while !processes_in(&self.mnt_ns).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = processes_in(&self.mnt_ns);
            if !left.is_empty() {
                problems.push(format!(
                    "processes outlived the test's podman, killed: {left:?}"
                ));
                for p in &left {
                    if let Some(pid) = p.split(' ').next().and_then(|p| p.parse().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        for m in mounts_under(&self.dir).into_iter().rev() {
            problems.push(format!("mount left at {m}, unmounted"));
            if let Err(e) = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH) {
                problems.push(format!("umount {m}: {e}"));
            }
        }
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            problems.push(format!("removing {}: {e}", self.dir.display()));
        }
        problems.extend(remove_cgroups(&self.name));
        if let Some(mut ns) = self.netns.take()
            && let Err(e) = ns.delete()
        {
            problems.push(e.to_string());
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("podman lab cleanup: {p}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs `cmd` with stdin closed and its output in files (daemonized grandchildren such as
/// conmon may hold on to pipes), killing it after [`WAIT`]. Ok(stdout) when it succeeds.
fn run_with_timeout(cmd: &mut Command, label: &str, scratch: &Path) -> Result<String, String> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let base = scratch.join(format!("flatnet-podman-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let files = fs::File::create(&out_path).and_then(|o| Ok((o, fs::File::create(&err_path)?)));
    let (out, err) =
        files.map_err(|e| format!("{label}: output files in {}: {e}", scratch.display()))?;
    let result = (|| {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{label}: {e}"))?;
        let deadline = Instant::now() + WAIT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
                    return Err(format!(
                        "{label}: no answer within {WAIT:?}; stderr: {}",
                        stderr.trim()
                    ));
                }
                Err(e) => return Err(format!("{label}: {e}")),
            }
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        if status.success() {
            Ok(stdout)
        } else {
            Err(format!("{label}: {status}; stderr: {}", stderr.trim()))
        }
    })();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    result
}

/// Polls `f` until it gives a value, panicking after [`WAIT`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

/// Live processes (zombies have no namespaces) in mount namespace `mnt_ns`, as "pid cmdline".
fn processes_in(mnt_ns: &str) -> Vec<String> {
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l.as_os_str() == mnt_ns))
        .map(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            format!(
                "{} {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()
            )
        })
        .collect()
}

/// Mount points at or under `dir` in the test's mount namespace, in mount order.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            != Some("Z")
    })
}

/// Removes the cgroup `name` (podman's `--cgroup-parent`, holding `conmon` and, while a
/// container runs, `libpod-<id>`) from every hierarchy, children first.
fn remove_cgroups(name: &str) -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut tops = vec![root.join(name)];
    if let Ok(hierarchies) = fs::read_dir(root) {
        tops.extend(hierarchies.flatten().map(|h| h.path().join(name)));
    }
    let mut problems = Vec::new();
    for top in tops.into_iter().filter(|t| t.is_dir()) {
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[i]) {
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            if let Err(e) = fs::remove_dir(d) {
                problems.push(format!("removing cgroup {}: {e}", d.display()));
            }
        }
    }
    problems
}
