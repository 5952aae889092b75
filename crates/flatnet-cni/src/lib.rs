//! The `flatnet-cni` plugin: routed pod wiring (design.md §5) behind the CNI 1.1 verbs.
//!
//! # Layout
//! - [`run`]: one plugin invocation, from environment + stdin to stdout + exit code.
//! - `add`, `del`, `check`, `gc`, `status`: the verbs.
//! - [`to_cni_error`]: the one place where failures become CNI error codes.
//!
//! Pod wiring: a veth pair, the pod end (`CNI_IFNAME`) born inside the pod's namespace with a
//! /32 address, a default route via the link-local gateway [`GATEWAY`] and a permanent
//! neighbour entry for it; the node end (`fl` + 12 hex digits of a hash of the attachment)
//! gets a /32 route to the pod and a permanent neighbour entry for the pod. No bridge, no ARP.
//!
//! This crate must not keep state outside the IPAM directory: everything else is derived
//! from the attachment (container ID + interface name).

use std::net::{IpAddr, Ipv4Addr};

use cni::{CniError, CniResult, Command, Env, Interface, IpConfig, NetConf, Route, code};
use datapath::netlink::{self, Handle, Route as KRoute};
use datapath::{NetNs, NetlinkError, NetnsError};
use ipam::{Ipam, IpamError};
use ipnet::{IpNet, Ipv4Net};

/// The pod's default gateway: answered by nobody, resolved by a permanent neighbour entry to
/// the node end of the veth (as Calico's 169.254.1.1).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

const DEFAULT_MTU: u32 = 1500;

/// Why a verb failed; [`to_cni_error`] turns it into a CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The request itself is wrong (environment or config), already with its CNI code.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// The IPAM store failed or has no address to give.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A netlink request in the host or pod namespace failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The pod's network namespace could not be opened or entered.
    #[error("container network namespace: {0}")]
    Netns(#[from] NetnsError),
    /// The node's `net/ipv4/ip_forward` could not be turned on.
    #[error(transparent)]
    Sysctl(#[from] datapath::sysctl::SysctlError),
    /// ADD found `CNI_IFNAME` already present in the pod's namespace.
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists {
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS`, the namespace path.
        netns: String,
    },
    /// CHECK found the attachment different from what ADD made; says what differs.
    #[error("{0}")]
    CheckFailed(String),
    /// DEL or GC went on after errors and reports all of them, joined with `; `.
    #[error("{0}")]
    Several(String),
}

/// Maps every failure to its CNI code (spec §5 "Error"): the one place this happens.
pub fn to_cni_error(e: PluginError) -> CniError {
    match e {
        PluginError::Cni(e) => e,
        PluginError::Netns(NetnsError::Open { path, source }) => CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("cannot open network namespace {}", path.display()),
        )
        .with_details(source.to_string()),
        PluginError::Ipam(IpamError::Io { path, source }) => {
            CniError::new(code::IO, format!("ipam store {}", path.display()))
                .with_details(source.to_string())
        }
        other => CniError::new(code::INTERNAL, other.to_string()),
    }
}

/// Name of the node end of the veth for an attachment: `fl` + 12 hex digits of FNV-1a.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("fl{:012x}", h & 0xffff_ffff_ffff)
}

/// Output of one invocation: what to print on stdout and the exit code.
pub struct Outcome {
    /// The CNI result or error JSON (empty for DEL, GC and a successful CHECK).
    pub stdout: String,
    /// 0 on success, 1 with a CNI error on stdout.
    pub exit_code: i32,
}

/// Runs one plugin invocation.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let version_hint = || {
        serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "1.1.0".to_string())
    };
    let env = match Env::from_lookup(get_env) {
        Ok(Some(env)) => env,
        Ok(None) => {
            return Outcome {
                stdout: String::new(),
                exit_code: 0,
            };
        }
        Err(e) => return fail(&e, &version_hint()),
    };
    if env.command == Command::Version {
        let input = version_hint();
        return Outcome {
            stdout: cni::version_output(&input).to_string(),
            exit_code: 0,
        };
    }
    let conf = match cni::parse_conf(&env, stdin) {
        Ok(c) => c,
        Err(e) => return fail(&e, &version_hint()),
    };
    let result = match env.command {
        Command::Add => add(&env, &conf).map(|r| Some(r.to_json(&conf.cni_version).to_string())),
        Command::Del => del(&env, &conf).map(|()| None),
        Command::Check => check(&env, &conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Version => Ok(None),
    };
    match result {
        Ok(out) => Outcome {
            stdout: out.unwrap_or_default(),
            exit_code: 0,
        },
        Err(e) => fail(&to_cni_error(e), &conf.cni_version),
    }
}

fn fail(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: e.to_json(version).to_string(),
        exit_code: 1,
    }
}

/// The text printed when the plugin runs without `CNI_COMMAND`.
pub fn about() -> String {
    format!(
        "CNI flatnet-cni plugin {}\nCNI protocol versions supported: {}",
        env!("CARGO_PKG_VERSION"),
        cni::SUPPORTED_VERSIONS.join(", ")
    )
}

fn attachment(env: &Env) -> Result<(&str, &str), PluginError> {
    let cid = env
        .container_id
        .as_deref()
        .ok_or_else(|| CniError::new(code::UNKNOWN_CONTAINER, "missing containerID"))?;
    let ifname = env.ifname.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "required env variables [CNI_IFNAME] missing",
        )
    })?;
    Ok((cid, ifname))
}

fn netns_of(env: &Env) -> Result<&std::path::Path, PluginError> {
    env.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "required env variables [CNI_NETNS] missing",
        )
        .into()
    })
}

fn open_ipam(conf: &NetConf) -> Result<Ipam, PluginError> {
    Ok(Ipam::new(&conf.data_dir, &conf.name, conf.subnet)?)
}

/// MTU of the link that holds this namespace's default route; 1500 when there is none.
fn detect_mtu(host: &mut Handle) -> Result<u32, PluginError> {
    let Some(oif) = host
        .routes()?
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .and_then(|r| r.oif)
    else {
        return Ok(DEFAULT_MTU);
    };
    Ok(host
        .links()?
        .into_iter()
        .find(|l| l.index == oif)
        .and_then(|l| l.mtu)
        .unwrap_or(DEFAULT_MTU))
}

fn add(env: &Env, conf: &NetConf) -> Result<CniResult, PluginError> {
    let (cid, ifname) = attachment(env)?;
    let netns_path = netns_of(env)?;
    let pod_ns = NetNs::open(netns_path)?;
    let mut pod = Handle::in_netns(&pod_ns)?;
    let mut host = Handle::new()?;
    let ipam = open_ipam(conf)?;
    let host_name = host_veth_name(cid, ifname);
    let pod_link = pod.link(ifname)?;
    let host_link = host.link(&host_name)?;
    if pod_link.is_some() || host_link.is_some() {
        let exists = || PluginError::InterfaceExists {
            ifname: ifname.into(),
            netns: netns_path.display().to_string(),
        };
        if ipam.find(cid, ifname)?.is_some() {
            return Err(exists());
        }
        // A pair whose DEL already released the address is only waiting for its background
        // removal (see `del`): finish that now, or let it finish.
        if host_link.is_some() {
            host.del_link(&host_name)?;
        } else if !gone_within(&mut pod, ifname, std::time::Duration::from_secs(1))? {
            return Err(exists());
        }
    }
    let mtu = match conf.mtu {
        Some(m) => m,
        None => detect_mtu(&mut host)?,
    };
    let ip = ipam.allocate(cid, ifname, conf.requested_ip)?;
    match wire(&mut host, &mut pod, &pod_ns, &host_name, ifname, ip, mtu) {
        Ok((host_mac, pod_mac)) => {
            let mine = CniResult {
                interfaces: vec![
                    Interface {
                        name: host_name,
                        mac: Some(netlink::format_mac(host_mac)),
                        mtu: Some(mtu),
                        sandbox: None,
                    },
                    Interface {
                        name: ifname.to_string(),
                        mac: Some(netlink::format_mac(pod_mac)),
                        mtu: Some(mtu),
                        sandbox: Some(netns_path.display().to_string()),
                    },
                ],
                ips: vec![IpConfig {
                    address: IpNet::V4(Ipv4Net::from(ip)),
                    gateway: Some(IpAddr::V4(GATEWAY)),
                    interface: Some(1),
                }],
                routes: vec![Route {
                    dst: IpNet::V4(Ipv4Net::default()),
                    gw: Some(IpAddr::V4(GATEWAY)),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                }],
                dns: conf.dns.clone(),
            };
            Ok(merge(conf.prev_result.clone(), mine))
        }
        Err(e) => {
            // Undo what this ADD did; the runtime's DEL would too, but leave nothing behind.
            let _ = host.del_link(&host_name);
            let _ = ipam.release(cid, ifname);
            Err(e)
        }
    }
}

/// Waits until `ifname` no longer exists in the namespace of `h`.
fn gone_within(
    h: &mut Handle,
    ifname: &str,
    limit: std::time::Duration,
) -> Result<bool, PluginError> {
    let deadline = std::time::Instant::now() + limit;
    while h.link(ifname)?.is_some() {
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(true)
}

/// Creates and configures both ends; returns (node end MAC, pod end MAC).
fn wire(
    host: &mut Handle,
    pod: &mut Handle,
    pod_ns: &NetNs,
    host_name: &str,
    ifname: &str,
    ip: Ipv4Addr,
    mtu: u32,
) -> Result<([u8; 6], [u8; 6]), PluginError> {
    host.add_veth(host_name, ifname, pod_ns.raw_fd(), mtu)?;
    let h = host
        .link(host_name)?
        .ok_or_else(|| NetlinkError::LinkNotFound(host_name.into()))?;
    let p = pod
        .link(ifname)?
        .ok_or_else(|| NetlinkError::LinkNotFound(ifname.into()))?;
    let (Some(host_mac), Some(pod_mac)) = (h.mac, p.mac) else {
        return Err(PluginError::CheckFailed(format!(
            "veth {host_name}/{ifname} has no MAC address"
        )));
    };
    // Pod side: /32 address, link-local gateway, default route, static neighbour.
    pod.add_addr(p.index, Ipv4Net::from(ip))?;
    pod.set_up(p.index)?;
    let gw_net = Ipv4Net::from(GATEWAY);
    pod.replace_route(&KRoute {
        dst: gw_net,
        gateway: None,
        oif: Some(p.index),
        scope_link: true,
        onlink: false,
    })?;
    pod.replace_route(&KRoute {
        dst: Ipv4Net::default(),
        gateway: Some(GATEWAY),
        oif: Some(p.index),
        scope_link: false,
        onlink: false,
    })?;
    pod.replace_neigh(p.index, GATEWAY, host_mac)?;
    // Node side: up, /32 route and static neighbour for the pod, forwarding on.
    host.set_up(h.index)?;
    host.replace_route(&KRoute {
        dst: Ipv4Net::from(ip),
        gateway: None,
        oif: Some(h.index),
        scope_link: true,
        onlink: false,
    })?;
    host.replace_neigh(h.index, ip, pod_mac)?;
    datapath::sysctl::ensure("net/ipv4/ip_forward", "1")?;
    Ok((host_mac, pod_mac))
}

/// Appends this plugin's interfaces and IPs to a previous plugin's result.
fn merge(prev: Option<CniResult>, mine: CniResult) -> CniResult {
    let Some(mut prev) = prev else { return mine };
    let offset = prev.interfaces.len();
    prev.interfaces.extend(mine.interfaces);
    prev.ips.extend(mine.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + offset);
        ip
    }));
    for r in mine.routes {
        if !prev.routes.contains(&r) {
            prev.routes.push(r);
        }
    }
    if prev.dns.is_none() {
        prev.dns = mine.dns;
    }
    prev
}

fn del(env: &Env, conf: &NetConf) -> Result<(), PluginError> {
    let (cid, ifname) = attachment(env)?;
    let host_name = host_veth_name(cid, ifname);
    let mut host = Handle::new()?;
    let mut errors = Vec::new();
    let ipam = open_ipam(conf)?;
    let ip = ipam.find(cid, ifname)?;
    match host.link(&host_name) {
        Ok(Some(link)) => {
            // Nothing reaches the pod from the moment its route is gone. Unregistering the
            // veth costs the kernel ~20 ms of RCU grace periods (measured: crates/datapath
            // examples/veth_timing.rs), so a detached child finishes that after we answer;
            // an ADD that meets the leftover pair removes it synchronously.
            if let Some(ip) = ip {
                let route = KRoute {
                    dst: Ipv4Net::from(ip),
                    gateway: None,
                    oif: Some(link.index),
                    scope_link: true,
                    onlink: false,
                };
                if let Err(e) = host.del_route(&route) {
                    errors.push(e.to_string());
                }
            }
            if !remove_link_in_background(link.index)
                && let Err(e) = host.del_link(&host_name)
            {
                errors.push(e.to_string());
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.to_string()),
    }
    if let Err(e) = ipam.release(cid, ifname) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Several(errors.join("; ")))
    }
}

/// Deletes the link `index` (of the calling thread's namespace) from a detached child
/// process. By index, not name: an ADD of the same attachment may already have made a new
/// pair with the same name. Returns false when no child could be started (the caller then
/// deletes it).
fn remove_link_in_background(index: u32) -> bool {
    if std::env::var_os("FLATNET_CNI_SYNC_DEL").is_some() {
        return false;
    }
    // SAFETY: the plugin is single-threaded, so the child may run arbitrary code; it only
    // opens /dev/null, makes a netlink socket, sends one request and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => true,
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            // Let go of the runtime's pipes so it sees our parent's output end at once.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::fd::AsRawFd;
                for fd in 0..3 {
                    // SAFETY: dup2(2) only takes descriptor numbers: `null` is open for the
                    // whole call and 0..3 are this process's own standard descriptors, which
                    // nothing in the child relies on any more.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            let code = match Handle::new().and_then(|mut h| h.del_link_index(index)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            // SAFETY: _exit(2) takes a plain integer and does not return; skipping the atexit
            // handlers and stdio buffers copied from the parent is the intent (they are its own).
            unsafe { libc::_exit(code) }
        }
        Err(_) => false,
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<(), PluginError> {
    let (cid, ifname) = attachment(env)?;
    let fail = |m: String| Err(PluginError::CheckFailed(m));
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "required prevResult missing"))?;
    let Some(ip) = open_ipam(conf)?.find(cid, ifname)? else {
        return fail(format!("no address is recorded for {cid}/{ifname}"));
    };
    let want = IpNet::V4(Ipv4Net::from(ip));
    if !prev.ips.iter().any(|c| c.address == want) {
        return fail(format!(
            "prevResult does not list {want} for {cid}/{ifname}"
        ));
    }
    let host_name = host_veth_name(cid, ifname);
    let mut host = Handle::new()?;
    let Some(h) = host.link(&host_name)? else {
        return fail(format!("node interface {host_name} is missing"));
    };
    if !h.up {
        return fail(format!("node interface {host_name} is down"));
    }
    if !host
        .routes()?
        .iter()
        .any(|r| r.dst == Ipv4Net::from(ip) && r.oif == Some(h.index))
    {
        return fail(format!("node route {ip}/32 dev {host_name} is missing"));
    }
    let netns_path = netns_of(env)?;
    let pod_ns = NetNs::open(netns_path)?;
    let mut pod = Handle::in_netns(&pod_ns)?;
    let Some(p) = pod.link(ifname)? else {
        return fail(format!(
            "interface {ifname} is missing in {}",
            netns_path.display()
        ));
    };
    if !p.up {
        return fail(format!("interface {ifname} is down"));
    }
    if !pod.addrs(p.index)?.contains(&Ipv4Net::from(ip)) {
        return fail(format!(
            "failed to match addr {ip}/32 on interface {ifname}"
        ));
    }
    if !pod
        .routes()?
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(GATEWAY) && r.oif == Some(p.index))
    {
        return fail(format!(
            "default route via {GATEWAY} dev {ifname} is missing"
        ));
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), PluginError> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?;
    let valid: Vec<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let (released, ipam_errors) = open_ipam(conf)?.gc(&valid)?;
    let mut errors: Vec<String> = ipam_errors.iter().map(ToString::to_string).collect();
    let mut host = Handle::new()?;
    for r in released {
        if let Err(e) = host.del_link(&host_veth_name(&r.container_id, &r.ifname)) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Several(errors.join("; ")))
    }
}

fn status(conf: &NetConf) -> Result<(), PluginError> {
    let ipam = open_ipam(conf)?;
    let used = ipam.used().map_err(|e| {
        CniError::new(code::NOT_AVAILABLE, "ipam store is not usable").with_details(e.to_string())
    })?;
    if used as u32 >= ipam.capacity() {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("no free address left in {}", conf.subnet),
        )
        .into());
    }
    Ok(())
}
