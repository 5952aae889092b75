//! [`NetnsDataplane`]: the only code of this crate that touches the kernel, through `datapath`,
//! inside the node's network namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use datapath::netlink::{Route as KRoute, VxlanSpec};
use datapath::nft;
use datapath::{Handle, NetNs, NetlinkError, sysctl};
use ipnet::Ipv4Net;
use plan::services::{self as svc, Backend as SvcBackend, ElemOp, Frontend, Key, Value};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::plan::{
    Address, Change, FdbEntry, IP_FORWARD, Mac, Neighbour, NodePlan, ROUTE_PROTOCOL, Route,
    UnderlayInfo, VXLAN_DEVICE, VxlanDevice,
};

/// A node's network namespace (or the agent's own), programmed over one rtnetlink socket
/// opened inside it; sysctls are written from a thread that enters it for the write.
pub struct NetnsDataplane {
    ns: Option<NetNs>,
    handle: Handle,
    /// The nfnetlink socket of the service proxy, opened on first use.
    nft: Option<nft::Nft>,
}

impl std::fmt::Debug for NetnsDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsDataplane")
            .field("ns", &self.ns.as_ref().map(|n| n.path()))
            .finish_non_exhaustive()
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(NetlinkError) -> DataplaneError {
    let op = op.into();
    move |source| DataplaneError::Netlink { op, source }
}

impl NetnsDataplane {
    /// Opens `netns` (a path such as `/run/netns/NAME`); `None` means the caller's own.
    pub fn open(netns: Option<&Path>) -> Result<Self, DataplaneError> {
        match netns {
            Some(path) => {
                let ns = NetNs::open(path)?;
                let handle = Handle::in_netns(&ns)
                    .map_err(nl(format!("open netlink in {}", path.display())))?;
                Ok(NetnsDataplane {
                    ns: Some(ns),
                    handle,
                    nft: None,
                })
            }
            None => Ok(NetnsDataplane {
                ns: None,
                handle: Handle::new().map_err(nl("open netlink"))?,
                nft: None,
            }),
        }
    }

    fn ns_path(&self) -> Option<&Path> {
        self.ns.as_ref().map(NetNs::path)
    }

    fn nft(&mut self) -> Result<&mut nft::Nft, String> {
        if self.nft.is_none() {
            let nft = nft::Nft::open(self.ns_path()).map_err(|e| e.to_string())?;
            self.nft = Some(nft);
        }
        self.nft
            .as_mut()
            .ok_or_else(|| "nfnetlink socket not open".to_string())
    }

    fn in_ns<T>(&self, f: impl FnOnce() -> T) -> Result<T, DataplaneError> {
        match &self.ns {
            Some(ns) => Ok(ns.run(f)?),
            None => Ok(f()),
        }
    }

    fn link_indexes(&mut self) -> Result<HashMap<String, u32>, DataplaneError> {
        Ok(self
            .handle
            .links()
            .map_err(nl("list links"))?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect())
    }

    fn observe_vxlan(
        &mut self,
        names: &HashMap<u32, String>,
        plan: &mut NodePlan,
    ) -> Result<(), DataplaneError> {
        let Some(v) = self
            .handle
            .vxlan(VXLAN_DEVICE)
            .map_err(nl(format!("get link {VXLAN_DEVICE}")))?
        else {
            return Ok(());
        };
        // A link of another kind, or one that is down, is not ours as it stands: reporting
        // none makes the diff create the device again (replacing that link).
        let (Some(vni), true) = (v.vni, v.link.up) else {
            return Ok(());
        };
        let index = v.link.index;
        let dev = v.link.name.clone();
        plan.vxlan = Some(VxlanDevice {
            name: dev.clone(),
            vni,
            port: v.port.unwrap_or(0),
            local: v.local.unwrap_or(Ipv4Addr::UNSPECIFIED),
            underlay: v
                .underlay_index
                .and_then(|i| names.get(&i).cloned())
                .unwrap_or_default(),
            learning: v.learning.unwrap_or(true),
            mtu: v.link.mtu.unwrap_or(0),
            mac: Mac(v.link.mac.unwrap_or_default()),
        });
        for addr in self
            .handle
            .addrs(index)
            .map_err(nl(format!("list addresses of {dev}")))?
        {
            plan.addresses.insert(Address {
                dev: dev.clone(),
                addr,
            });
        }
        for (i, ip, mac) in self.handle.neighbours().map_err(nl("list neighbours"))? {
            if i == index {
                plan.neighbours.insert(Neighbour {
                    dev: dev.clone(),
                    ip,
                    mac: Mac(mac),
                });
            }
        }
        for (mac, dst) in self
            .handle
            .fdb(index)
            .map_err(nl(format!("list fdb of {dev}")))?
        {
            plan.fdb.insert(FdbEntry {
                dev: dev.clone(),
                mac: Mac(mac),
                dst,
            });
        }
        Ok(())
    }

    fn kroute(route: &Route, oif: u32) -> KRoute {
        KRoute {
            dst: route.dst,
            gateway: (!route.via.is_unspecified()).then_some(route.via),
            oif: Some(oif),
            scope_link: route.via.is_unspecified(),
            onlink: route.onlink,
        }
    }

    fn apply_one(
        &mut self,
        change: &Change,
        links: &mut HashMap<String, u32>,
    ) -> Result<(), DataplaneError> {
        let op = || change.to_string();
        // Index of a device an Add needs; a missing device is an error.
        let need = |links: &HashMap<String, u32>, dev: &str| {
            links
                .get(dev)
                .copied()
                .ok_or_else(|| DataplaneError::Other(format!("{change}: device {dev} not found")))
        };
        match change {
            Change::SetSysctl { key, value } => self.in_ns(|| sysctl::ensure(key, value))??,
            Change::AddVxlan(d) => {
                let underlay_index = need(links, &d.underlay)?;
                if self.handle.del_link(&d.name).map_err(nl(op()))? {
                    tracing::info!(dev = %d.name, "replaced a link that was not the wanted vxlan device");
                }
                self.handle
                    .create_vxlan(&VxlanSpec {
                        name: d.name.clone(),
                        vni: d.vni,
                        local: d.local,
                        underlay_index,
                        port: d.port,
                        mtu: d.mtu,
                        mac: Some(d.mac.0),
                    })
                    .map_err(nl(op()))?;
                *links = self.link_indexes()?;
                let index = need(links, &d.name)?;
                self.handle.set_up(index).map_err(nl(op()))?;
            }
            Change::DelVxlan(d) => {
                self.handle.del_link(&d.name).map_err(nl(op()))?;
                *links = self.link_indexes()?;
            }
            Change::SetMtu { dev, mtu } => {
                let index = need(links, dev)?;
                self.handle.set_mtu(index, *mtu).map_err(nl(op()))?;
            }
            Change::AddAddress(a) => {
                let index = need(links, &a.dev)?;
                self.handle.add_addr(index, a.addr).map_err(nl(op()))?;
            }
            Change::AddFdb(f) => {
                let index = need(links, &f.dev)?;
                self.handle
                    .replace_fdb(index, f.mac.0, f.dst)
                    .map_err(nl(op()))?;
            }
            Change::AddNeighbour(n) => {
                let index = need(links, &n.dev)?;
                self.handle
                    .replace_neigh(index, n.ip, n.mac.0)
                    .map_err(nl(op()))?;
            }
            Change::AddRoute(r) => {
                let index = need(links, &r.dev)?;
                self.handle
                    .replace_route_as(&Self::kroute(r, index), ROUTE_PROTOCOL)
                    .map_err(nl(op()))?;
            }
            // Removing from a device that is gone: nothing left to remove.
            Change::DelRoute(r) => {
                if let Some(&index) = links.get(&r.dev) {
                    self.handle
                        .del_route_as(&Self::kroute(r, index), ROUTE_PROTOCOL)
                        .map_err(nl(op()))?;
                }
            }
            Change::DelNeighbour(n) => {
                if let Some(&index) = links.get(&n.dev) {
                    self.handle.del_neigh(index, n.ip).map_err(nl(op()))?;
                }
            }
            Change::DelFdb(f) => {
                if let Some(&index) = links.get(&f.dev) {
                    self.handle
                        .del_fdb(index, f.mac.0, f.dst)
                        .map_err(nl(op()))?;
                }
            }
            Change::DelAddress(a) => {
                if let Some(&index) = links.get(&a.dev) {
                    self.handle.del_addr(index, a.addr).map_err(nl(op()))?;
                }
            }
        }
        Ok(())
    }
}

impl Dataplane for NetnsDataplane {
    fn underlay(&mut self, dev: &str) -> Result<UnderlayInfo, DataplaneError> {
        let err = |reason: &str| DataplaneError::Underlay {
            dev: dev.to_string(),
            reason: reason.to_string(),
        };
        let link = self
            .handle
            .link(dev)
            .map_err(nl(format!("get link {dev}")))?
            .ok_or_else(|| err("not found"))?;
        let ip = self
            .handle
            .addrs(link.index)
            .map_err(nl(format!("list addresses of {dev}")))?
            .first()
            .map(Ipv4Net::addr)
            .ok_or_else(|| err("has no IPv4 address"))?;
        let mtu = link.mtu.ok_or_else(|| err("reports no MTU"))?;
        Ok(UnderlayInfo {
            dev: dev.to_string(),
            ip,
            mtu,
        })
    }

    fn observe(&mut self) -> Result<NodePlan, DataplaneError> {
        let mut plan = NodePlan::default();
        let forward = self.in_ns(|| sysctl::read(IP_FORWARD))??;
        plan.sysctls.insert(IP_FORWARD.to_string(), forward);
        let names: HashMap<u32, String> = self
            .link_indexes()?
            .into_iter()
            .map(|(n, i)| (i, n))
            .collect();
        for r in self
            .handle
            .routes_of_protocol(ROUTE_PROTOCOL)
            .map_err(nl("list routes"))?
        {
            plan.routes.insert(Route {
                dst: r.dst,
                via: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                dev: r
                    .oif
                    .and_then(|i| names.get(&i).cloned())
                    .unwrap_or_default(),
                onlink: r.onlink,
            });
        }
        self.observe_vxlan(&names, &mut plan)?;
        Ok(plan)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        let mut links = self.link_indexes()?;
        let mut failed = Vec::new();
        for change in changes {
            match self.apply_one(change, &mut links) {
                Ok(()) => tracing::debug!(%change, "applied"),
                Err(e) => {
                    tracing::warn!(%change, error = %e, "change failed");
                    failed.push(e.to_string());
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError::Apply {
                failed,
                total: changes.len(),
            })
        }
    }
}

/// The service proxy's table: structure through `nft -f`, elements through one nfnetlink
/// batch per transaction, conntrack through the `conntrack` tool.
impl crate::proxy::ProxyDataplane for NetnsDataplane {
    fn nft_script(&mut self, script: &str) -> Result<(), String> {
        nft::run_script(self.ns_path(), script).map_err(|e| e.to_string())
    }

    fn nft_elements(&mut self, ops: &[ElemOp], flush: bool) -> Result<(), String> {
        let mut batch = nft::Batch::new(nft::Family::Inet, svc::TABLE);
        if flush {
            for map in svc::STATIC_MAPS {
                batch.flush(map);
            }
        }
        for op in ops {
            match op {
                ElemOp::Add { map, key, value } => {
                    let key = key_fields(key);
                    let e = match value_data(value) {
                        Some(data) => nft::Element::map(key, data),
                        None => nft::Element::key(key),
                    };
                    batch.add(map, e);
                }
                ElemOp::Delete { map, key } => batch.delete(map, key_fields(key)),
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.nft()?.commit(&batch).map_err(|e| e.to_string())
    }

    fn nft_chains(&mut self) -> Result<Vec<String>, String> {
        datapath::tools::nft_chains(self.ns_path(), "inet", svc::TABLE).map_err(|e| e.to_string())
    }

    fn forget_udp(&mut self, fe: &Frontend, endpoint: Option<Ipv4Addr>) -> Result<(), String> {
        datapath::tools::conntrack_delete_udp(self.ns_path(), fe.ip, fe.port, endpoint)
            .map(|n| {
                if n > 0 {
                    tracing::info!(frontend = %fe, endpoint = ?endpoint, flows = n, "forgot stale UDP flows");
                }
            })
            .map_err(|e| e.to_string())
    }

    fn announce(
        &mut self,
        dev: &str,
        pool: Ipv4Net,
        ips: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Result<(), String> {
        let link = self
            .handle
            .link(dev)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("underlay device {dev} not found"))?;
        let held: Vec<Ipv4Net> = self
            .handle
            .addrs(link.index)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.prefix_len() == 32 && pool.contains(&a.addr()))
            .collect();
        for a in &held {
            if !ips.contains(&a.addr()) {
                self.handle
                    .del_addr(link.index, *a)
                    .map_err(|e| e.to_string())?;
                tracing::info!(ip = %a.addr(), "no longer announcing LoadBalancer IP");
            }
        }
        for ip in ips {
            if held.iter().any(|a| a.addr() == *ip) {
                continue;
            }
            let net = Ipv4Net::from(*ip);
            self.handle
                .add_addr(link.index, net)
                .map_err(|e| e.to_string())?;
            tracing::info!(ip = %ip, dev, "announcing LoadBalancer IP");
            if let Err(e) = datapath::tools::gratuitous_arp(self.ns_path(), dev, *ip) {
                tracing::warn!(ip = %ip, error = %e, "gratuitous ARP failed; neighbours learn the new owner when their ARP entry expires");
            }
        }
        Ok(())
    }

    fn forget_affinity(&mut self, mark: u32, gone: &[SvcBackend]) -> Result<(), String> {
        use nft::{Data, Field, FieldKind};
        let nft = self.nft()?;
        let elems = nft
            .list_elements(
                svc::TABLE,
                svc::maps::AFFINITY,
                &[FieldKind::Ipv4, FieldKind::Mark],
                Some(&[FieldKind::Ipv4, FieldKind::Port]),
            )
            .map_err(|e| e.to_string())?;
        let mut batch = nft::Batch::new(nft::Family::Inet, svc::TABLE);
        for e in elems {
            let pinned = match &e.data {
                Some(Data::Concat(d)) => match d.as_slice() {
                    [Field::Ipv4(ip), Field::Port(port)] => Some(SvcBackend {
                        ip: *ip,
                        port: *port,
                    }),
                    _ => None,
                },
                _ => None,
            };
            let ours = matches!(e.key.get(1), Some(Field::Mark(m)) if *m == mark);
            if ours && pinned.is_some_and(|b| gone.contains(&b)) {
                batch.delete(svc::maps::AFFINITY, e.key.clone());
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        nft.commit(&batch).map_err(|e| e.to_string())
    }
}

fn frontend_fields(f: &Frontend) -> Vec<nft::Field> {
    vec![
        nft::Field::Ipv4(f.ip),
        nft::Field::Proto(f.proto.number()),
        nft::Field::Port(f.port),
    ]
}

fn key_fields(k: &Key) -> Vec<nft::Field> {
    match k {
        Key::Frontend(f) => frontend_fields(f),
        Key::Slot(f, slot) => {
            let mut v = frontend_fields(f);
            v.push(nft::Field::Mark(*slot));
            v
        }
        Key::Id(id) => vec![nft::Field::Mark(*id)],
        Key::Ip(ip) => vec![nft::Field::Ipv4(*ip)],
        Key::IpPair(a, b) => vec![nft::Field::Ipv4(*a), nft::Field::Ipv4(*b)],
    }
}

fn value_data(v: &Value) -> Option<nft::Data> {
    match v {
        Value::None => None,
        Value::Goto(chain) => Some(nft::Data::Verdict(nft::Verdict::Goto(chain.clone()))),
        Value::Drop => Some(nft::Data::Verdict(nft::Verdict::Drop)),
        Value::Backend(b) => Some(nft::Data::Concat(vec![
            nft::Field::Ipv4(b.ip),
            nft::Field::Port(b.port),
        ])),
        Value::Mark(m) => Some(nft::Data::Concat(vec![nft::Field::Mark(*m)])),
    }
}

/// The policy table: structure through `nft -f`, elements through one nfnetlink batch per
/// transaction (the allow sets are concatenated interval sets: one range per field).
impl crate::policy::PolicyDataplane for NetnsDataplane {
    fn policy_script(&mut self, script: &str) -> Result<(), String> {
        nft::run_script(self.ns_path(), script).map_err(|e| e.to_string())
    }

    fn policy_elements(
        &mut self,
        ops: &[crate::policy::PolicyOp],
        flush: bool,
    ) -> Result<(), String> {
        use crate::policy::{AllowRange, PolicyOp, nft as pol};
        let mut batch = nft::Batch::new(nft::Family::Inet, pol::TABLE);
        if flush {
            for set in pol::sets::ALL {
                batch.flush(set);
            }
        }
        let ends = |r: &AllowRange| {
            (
                vec![
                    nft::Field::Ipv4(r.pod),
                    nft::Field::Ipv4(r.peer.0),
                    nft::Field::Proto(r.proto.0),
                    nft::Field::Port(r.port.0),
                ],
                vec![
                    nft::Field::Ipv4(r.pod),
                    nft::Field::Ipv4(r.peer.1),
                    nft::Field::Proto(r.proto.1),
                    nft::Field::Port(r.port.1),
                ],
            )
        };
        for op in ops {
            match op {
                PolicyOp::AddAddr { set, ip } => {
                    batch.add(set, nft::Element::key(vec![nft::Field::Ipv4(*ip)]));
                }
                PolicyOp::DelAddr { set, ip } => batch.delete(set, vec![nft::Field::Ipv4(*ip)]),
                PolicyOp::AddRange { set, range } => {
                    let (start, end) = ends(range);
                    batch.add(set, nft::Element::range(start, end));
                }
                PolicyOp::DelRange { set, range } => {
                    let (start, end) = ends(range);
                    batch.delete_range(set, start, end);
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.nft()?.commit(&batch).map_err(|e| e.to_string())
    }
}
