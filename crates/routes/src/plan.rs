//! The pure core: leases -> [`NodePlan`] ([`compile`]) and two plans -> [`Change`]s ([`diff`]).
//!
//! Nothing here touches the kernel or the store. A plan names devices by name (never by
//! ifindex), so a plan compiled on one machine reads the same on another and can be printed,
//! golden-tested and compared with what the kernel reports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
pub use store::contract::{Backend, Lease, LeaseAttrs, Mac, VXLAN_OVERHEAD, VXLAN_VNI};

/// Name of the node's VXLAN device (flannel calls its `flannel.<VNI>`).
pub const VXLAN_DEVICE: &str = "flatnet.1";
/// VXLAN UDP port: the Linux default 8472, as flannel uses (not IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;
/// Routing protocol number on every route the agent installs (`ip route ... proto 70`), so
/// that after a restart it can find what it owns in the kernel. Not used by any routing daemon
/// in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 0x46;
/// `/proc/sys` path of IPv4 forwarding.
pub const IP_FORWARD: &str = "net/ipv4/ip_forward";

/// MTU for pod interfaces: the underlay's minus the backend's overhead.
pub fn pod_mtu(backend: Backend, underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(backend.overhead())
}

/// The node's underlay link, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnderlayInfo {
    /// Name of the underlay link (`ip link` name, e.g. `eth0`).
    pub dev: String,
    /// First IPv4 address of `dev`.
    pub ip: Ipv4Addr,
    /// MTU of `dev`, in bytes.
    pub mtu: u32,
}

/// The node's VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct VxlanDevice {
    /// Link name; [`VXLAN_DEVICE`] in a compiled plan.
    pub name: String,
    /// VXLAN network identifier ([`VXLAN_VNI`] in a compiled plan).
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Source address of encapsulated packets (the underlay IP).
    pub local: Ipv4Addr,
    /// Link the encapsulated packets leave by.
    pub underlay: String,
    /// Whether the kernel learns remote MACs from traffic; always off in a compiled plan, as the
    /// FDB is programmed from the leases.
    pub learning: bool,
    /// Device MTU, in bytes: the underlay's minus [`VXLAN_OVERHEAD`].
    pub mtu: u32,
    /// The device's own MAC (the local VTEP MAC other nodes put in their FDB and neighbours).
    pub mac: Mac,
}

impl VxlanDevice {
    /// Same device up to its MTU (the only attribute changed in place; any other difference
    /// means deleting and re-creating the device).
    pub fn same_identity(&self, other: &VxlanDevice) -> bool {
        VxlanDevice {
            mtu: 0,
            ..self.clone()
        } == VxlanDevice {
            mtu: 0,
            ..other.clone()
        }
    }
}

/// An IPv4 address on a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Address {
    /// Device the address is on.
    pub dev: String,
    /// Address and prefix; on the VXLAN device, the node subnet's network address as a /32.
    pub addr: Ipv4Net,
}

/// A main-table route tagged [`ROUTE_PROTOCOL`]; at most one per `dst` in a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Route {
    /// Destination prefix: a remote node's pod subnet, or the service CIDR.
    pub dst: Ipv4Net,
    /// Gateway (`0.0.0.0` only in a plan read back from a kernel route without one).
    pub via: Ipv4Addr,
    /// Output device: the underlay (host-gw) or the VXLAN device.
    pub dev: String,
    /// `onlink`: the gateway counts as reachable on `dev` with no route covering it (vxlan).
    pub onlink: bool,
}

/// A permanent neighbour (ARP) entry; at most one per (`dev`, `ip`) in a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Neighbour {
    /// Device the entry is on (the VXLAN device).
    pub dev: String,
    /// Neighbour address: a remote subnet's network address, the route's gateway.
    pub ip: Ipv4Addr,
    /// Link-layer address: the remote node's VTEP MAC.
    pub mac: Mac,
}

/// A VXLAN forwarding entry: frames for `mac` go to the VTEP at `dst`; at most one per
/// (`dev`, `mac`) in a compiled plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FdbEntry {
    /// The VXLAN device.
    pub dev: String,
    /// Remote VTEP MAC.
    pub mac: Mac,
    /// Underlay IP of the remote node the frames are sent to.
    pub dst: Ipv4Addr,
}

/// Everything the agent wants in (or found in) a node's network namespace. Sets keep every
/// list sorted, so two plans compare, print and diff deterministically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    /// `/proc/sys` path -> value.
    pub sysctls: BTreeMap<String, String>,
    /// The VXLAN device; `None` with host-gw.
    pub vxlan: Option<VxlanDevice>,
    /// Addresses on the agent's devices (the VXLAN device's /32).
    pub addresses: BTreeSet<Address>,
    /// Routes tagged [`ROUTE_PROTOCOL`] towards other nodes' subnets.
    pub routes: BTreeSet<Route>,
    /// Permanent neighbour entries for the VXLAN gateways.
    pub neighbours: BTreeSet<Neighbour>,
    /// VXLAN FDB entries: remote VTEP MAC -> underlay IP.
    pub fdb: BTreeSet<FdbEntry>,
}

/// Why a remote lease takes no part in the plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteRefused {
    /// The lease belongs to this node too (an older lease it has not let go of).
    #[error("{cidr} is another lease of this node")]
    OwnNode {
        /// The remote lease's CIDR.
        cidr: Ipv4Net,
    },
    /// The remote subnet overlaps the local one.
    #[error("{cidr} overlaps the local subnet {local}")]
    Overlaps {
        /// The remote lease's CIDR.
        cidr: Ipv4Net,
        /// The local lease's CIDR.
        local: Ipv4Net,
    },
    /// The remote lease names this node's underlay address.
    #[error("{cidr} names this node's underlay IP {ip}")]
    SameUnderlay {
        /// The remote lease's CIDR.
        cidr: Ipv4Net,
        /// The underlay address both name.
        ip: Ipv4Addr,
    },
    /// A VXLAN lease without the VTEP MAC the FDB and neighbour entries need.
    #[error("{cidr} of node {node} has no vtepMAC")]
    NoVtepMac {
        /// The remote lease's CIDR.
        cidr: Ipv4Net,
        /// The remote node.
        node: String,
    },
}

/// Why a remote lease takes no part in the plan; `Ok` when it does.
pub fn check_remote(local: &Lease, remote: &Lease, backend: Backend) -> Result<(), RemoteRefused> {
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    let cidr = remote.cidr;
    if remote.attrs.node == local.attrs.node {
        return Err(RemoteRefused::OwnNode { cidr });
    }
    if overlaps(&remote.cidr, &local.cidr) {
        return Err(RemoteRefused::Overlaps {
            cidr,
            local: local.cidr,
        });
    }
    if remote.attrs.underlay_ip == local.attrs.underlay_ip {
        return Err(RemoteRefused::SameUnderlay {
            cidr,
            ip: remote.attrs.underlay_ip,
        });
    }
    if backend == Backend::Vxlan && remote.attrs.vtep_mac.is_none() {
        return Err(RemoteRefused::NoVtepMac {
            cidr,
            node: remote.attrs.node.clone(),
        });
    }
    Ok(())
}

/// The plan for a node holding `local`, given every other node's lease. Remotes that fail
/// [`check_remote`], that overlap an earlier remote, or (vxlan) repeat an earlier VTEP MAC are
/// left out (earlier: smaller CIDR). No route for the local CIDR: the CNI plugin installs one
/// /32 per pod.
pub fn compile(
    local: &Lease,
    remotes: &[Lease],
    backend: Backend,
    underlay: &UnderlayInfo,
) -> NodePlan {
    let mut plan = NodePlan::default();
    plan.sysctls.insert(IP_FORWARD.to_string(), "1".to_string());

    let mut sorted: Vec<&Lease> = remotes.iter().collect();
    sorted.sort_by(|a, b| {
        a.cidr
            .cmp(&b.cidr)
            .then_with(|| a.attrs.node.cmp(&b.attrs.node))
    });
    let mut taken: Vec<Ipv4Net> = Vec::new();
    let mut macs: BTreeSet<Mac> = BTreeSet::new();
    let local_mac = local
        .attrs
        .vtep_mac
        .unwrap_or_else(|| Mac::for_vtep(underlay.ip));
    macs.insert(local_mac);

    if backend == Backend::Vxlan {
        plan.vxlan = Some(VxlanDevice {
            name: VXLAN_DEVICE.to_string(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: underlay.ip,
            underlay: underlay.dev.clone(),
            learning: false,
            mtu: pod_mtu(backend, underlay.mtu),
            mac: local_mac,
        });
        plan.addresses.insert(Address {
            dev: VXLAN_DEVICE.to_string(),
            addr: Ipv4Net::from(local.cidr.network()),
        });
    }

    for remote in sorted {
        if check_remote(local, remote, backend).is_err()
            || taken
                .iter()
                .any(|t| t.contains(&remote.cidr.network()) || remote.cidr.contains(&t.network()))
        {
            continue;
        }
        match backend {
            Backend::HostGw => {
                plan.routes.insert(Route {
                    dst: remote.cidr,
                    via: remote.attrs.underlay_ip,
                    dev: underlay.dev.clone(),
                    onlink: false,
                });
            }
            Backend::Vxlan => {
                let Some(mac) = remote.attrs.vtep_mac else {
                    continue;
                };
                if !macs.insert(mac) {
                    continue;
                }
                let gw = remote.cidr.network();
                plan.routes.insert(Route {
                    dst: remote.cidr,
                    via: gw,
                    dev: VXLAN_DEVICE.to_string(),
                    onlink: true,
                });
                plan.neighbours.insert(Neighbour {
                    dev: VXLAN_DEVICE.to_string(),
                    ip: gw,
                    mac,
                });
                plan.fdb.insert(FdbEntry {
                    dev: VXLAN_DEVICE.to_string(),
                    mac,
                    dst: remote.attrs.underlay_ip,
                });
            }
        }
        taken.push(remote.cidr);
    }
    plan
}

/// The route that lets the node's own processes reach ClusterIPs: without it a node with no
/// default route (the lab's) fails the route lookup before the service proxy's DNAT in the
/// output hook; with it the packet leaves the lookup and is DNATed and rerouted to the
/// endpoint. Addresses of the CIDR that no service holds are refused by the proxy's table.
pub fn service_route(service_cidr: Ipv4Net, underlay: &UnderlayInfo) -> Route {
    Route {
        dst: service_cidr,
        via: Ipv4Addr::UNSPECIFIED,
        dev: underlay.dev.clone(),
        onlink: false,
    }
}

/// One step from one plan towards another. `Add*` items replace what the kernel holds under
/// the same key (route: dst; neighbour: dev+ip; FDB: dev+mac), so a changed item is one `Add`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "op", content = "item", rename_all = "kebab-case")]
pub enum Change {
    /// Write `value` to the `/proc/sys` path `key`.
    SetSysctl {
        /// `/proc/sys` path, e.g. [`IP_FORWARD`].
        key: String,
        /// Value to write.
        value: String,
    },
    /// Delete the device; every address, route, neighbour and FDB entry on it goes with it.
    DelVxlan(VxlanDevice),
    /// Create the device (replacing a link of the same name) and set it up.
    AddVxlan(VxlanDevice),
    /// Change the MTU of an existing device in place.
    SetMtu {
        /// Device name.
        dev: String,
        /// New MTU, in bytes.
        mtu: u32,
    },
    /// Add the address to its device.
    AddAddress(Address),
    /// Add or replace the FDB entry for (`dev`, `mac`).
    AddFdb(FdbEntry),
    /// Add or replace the permanent neighbour for (`dev`, `ip`).
    AddNeighbour(Neighbour),
    /// Add or replace the route for `dst`.
    AddRoute(Route),
    /// Delete the route (a no-op when its device is gone, as for every `Del*`).
    DelRoute(Route),
    /// Delete the neighbour for (`dev`, `ip`).
    DelNeighbour(Neighbour),
    /// Delete the FDB entry for (`dev`, `mac`).
    DelFdb(FdbEntry),
    /// Remove the address from its device.
    DelAddress(Address),
}

/// The changes that turn `old` (usually what the kernel holds) into `new`, in a safe order:
/// sysctls; device re-creation; then what routes depend on before the routes (addresses, FDB,
/// neighbours, routes); then removals in the reverse order (routes first, so no route ever
/// points at a missing neighbour); a device no longer wanted goes last. Items in both plans
/// produce nothing, so applying the diff of a plan with itself touches nothing.
pub fn diff(old: &NodePlan, new: &NodePlan) -> Vec<Change> {
    let mut out = Vec::new();
    for (key, value) in &new.sysctls {
        if old.sysctls.get(key) != Some(value) {
            out.push(Change::SetSysctl {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }

    // Devices whose entries vanish with them (deleted or re-created).
    let mut gone: Vec<&str> = Vec::new();
    let mut last = Vec::new();
    match (&old.vxlan, &new.vxlan) {
        (None, Some(n)) => out.push(Change::AddVxlan(n.clone())),
        (Some(o), Some(n)) if o.same_identity(n) => {
            if o.mtu != n.mtu {
                out.push(Change::SetMtu {
                    dev: n.name.clone(),
                    mtu: n.mtu,
                });
            }
        }
        (Some(o), Some(n)) => {
            out.push(Change::DelVxlan(o.clone()));
            out.push(Change::AddVxlan(n.clone()));
            gone.push(&o.name);
        }
        (Some(o), None) => {
            last.push(Change::DelVxlan(o.clone()));
            gone.push(&o.name);
        }
        (None, None) => {}
    }
    let alive = |dev: &str| !gone.contains(&dev);

    let old_addrs: BTreeSet<&Address> = old.addresses.iter().filter(|a| alive(&a.dev)).collect();
    let new_addrs: BTreeSet<&Address> = new.addresses.iter().collect();
    let old_fdb: BTreeSet<&FdbEntry> = old.fdb.iter().filter(|f| alive(&f.dev)).collect();
    let new_fdb: BTreeSet<&FdbEntry> = new.fdb.iter().collect();
    let old_neigh: BTreeMap<(&str, Ipv4Addr), &Neighbour> = old
        .neighbours
        .iter()
        .filter(|n| alive(&n.dev))
        .map(|n| ((n.dev.as_str(), n.ip), n))
        .collect();
    let new_neigh: BTreeMap<(&str, Ipv4Addr), &Neighbour> = new
        .neighbours
        .iter()
        .map(|n| ((n.dev.as_str(), n.ip), n))
        .collect();
    let old_routes: BTreeMap<Ipv4Net, &Route> = old
        .routes
        .iter()
        .filter(|r| alive(&r.dev))
        .map(|r| (r.dst, r))
        .collect();
    let new_routes: BTreeMap<Ipv4Net, &Route> = new.routes.iter().map(|r| (r.dst, r)).collect();

    out.extend(
        new_addrs
            .difference(&old_addrs)
            .map(|a| Change::AddAddress((*a).clone())),
    );
    out.extend(
        new_fdb
            .difference(&old_fdb)
            .map(|f| Change::AddFdb((*f).clone())),
    );
    out.extend(
        new_neigh
            .iter()
            .filter(|(k, n)| old_neigh.get(k) != Some(n))
            .map(|(_, n)| Change::AddNeighbour((*n).clone())),
    );
    out.extend(
        new_routes
            .iter()
            .filter(|(k, r)| old_routes.get(k) != Some(r))
            .map(|(_, r)| Change::AddRoute((*r).clone())),
    );
    out.extend(
        old_routes
            .iter()
            .filter(|(k, _)| !new_routes.contains_key(k))
            .map(|(_, r)| Change::DelRoute((*r).clone())),
    );
    out.extend(
        old_neigh
            .iter()
            .filter(|(k, _)| !new_neigh.contains_key(k))
            .map(|(_, n)| Change::DelNeighbour((*n).clone())),
    );
    out.extend(
        old_fdb
            .difference(&new_fdb)
            .map(|f| Change::DelFdb((*f).clone())),
    );
    out.extend(
        old_addrs
            .difference(&new_addrs)
            .map(|a| Change::DelAddress((*a).clone())),
    );
    out.extend(last);
    out
}

impl fmt::Display for VxlanDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vxlan {} id {} local {} dev {} dstport {} {} mtu {} address {}",
            self.name,
            self.vni,
            self.local,
            self.underlay,
            self.port,
            if self.learning {
                "learning"
            } else {
                "nolearning"
            },
            self.mtu,
            self.mac
        )
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {} dev {}", self.addr, self.dev)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {} via {} dev {}", self.dst, self.via, self.dev)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        write!(f, " proto {ROUTE_PROTOCOL}")
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "neigh {} lladdr {} dev {} permanent",
            self.ip, self.mac, self.dev
        )
    }
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fdb {} dev {} dst {}", self.mac, self.dev, self.dst)
    }
}

/// One line per item, in the order [`diff`] would add them (`ip`-like wording).
impl fmt::Display for NodePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.sysctls {
            writeln!(f, "sysctl {key}={value}")?;
        }
        if let Some(dev) = &self.vxlan {
            writeln!(f, "{dev}")?;
        }
        for a in &self.addresses {
            writeln!(f, "{a}")?;
        }
        for e in &self.fdb {
            writeln!(f, "{e}")?;
        }
        for n in &self.neighbours {
            writeln!(f, "{n}")?;
        }
        for r in &self.routes {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetSysctl { key, value } => write!(f, "set sysctl {key}={value}"),
            Change::DelVxlan(d) => write!(f, "del {d}"),
            Change::AddVxlan(d) => write!(f, "add {d}"),
            Change::SetMtu { dev, mtu } => write!(f, "set mtu {mtu} dev {dev}"),
            Change::AddAddress(a) => write!(f, "add {a}"),
            Change::AddFdb(e) => write!(f, "add {e}"),
            Change::AddNeighbour(n) => write!(f, "add {n}"),
            Change::AddRoute(r) => write!(f, "add {r}"),
            Change::DelRoute(r) => write!(f, "del {r}"),
            Change::DelNeighbour(n) => write!(f, "del {n}"),
            Change::DelFdb(e) => write!(f, "del {e}"),
            Change::DelAddress(a) => write!(f, "del {a}"),
        }
    }
}
