//! [`NetnsRoutes`]: the only code of this crate that touches the kernel, through `datapath`,
//! inside the node's network namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use datapath::netlink::{Route as KRoute, VxlanSpec};
use datapath::{Handle, NetNs, NetlinkError, sysctl};
use ipnet::Ipv4Net;

use crate::dataplane::{Dataplane, DataplaneError};
use crate::plan::{
    Address, Change, FdbEntry, IP_FORWARD, Mac, Neighbour, NodePlan, ROUTE_PROTOCOL, Route,
    UnderlayInfo, VXLAN_DEVICE, VxlanDevice,
};

/// A node's network namespace (or the agent's own) as pod routing programs it: over one
/// rtnetlink socket opened inside it; sysctls are written from a thread that enters it.
pub struct NetnsRoutes {
    ns: Option<NetNs>,
    handle: Handle,
}

impl std::fmt::Debug for NetnsRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsRoutes")
            .field("ns", &self.ns.as_ref().map(|n| n.path()))
            .finish_non_exhaustive()
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(NetlinkError) -> DataplaneError {
    let op = op.into();
    move |source| DataplaneError::Netlink { op, source }
}

impl NetnsRoutes {
    /// Opens `netns` (a path such as `/run/netns/NAME`); `None` means the caller's own.
    pub fn open(netns: Option<&Path>) -> Result<Self, DataplaneError> {
        match netns {
            Some(path) => {
                let ns = NetNs::open(path)?;
                let handle = Handle::in_netns(&ns)
                    .map_err(nl(format!("open netlink in {}", path.display())))?;
                Ok(NetnsRoutes {
                    ns: Some(ns),
                    handle,
                })
            }
            None => Ok(NetnsRoutes {
                ns: None,
                handle: Handle::new().map_err(nl("open netlink"))?,
            }),
        }
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

impl Dataplane for NetnsRoutes {
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
