//! A synchronous rtnetlink socket bound to one network namespace.
//!
//! One request at a time, each acknowledged, so every error names the operation that failed.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroI32;
use std::os::fd::RawFd;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns::{NetNs, NetnsError};

/// Why an rtnetlink request failed; each variant names the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be created, bound or connected.
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    /// The namespace to open the socket in could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The kernel refused a request.
    #[error("{op}: {source}")]
    Kernel {
        /// What was asked (`add route 10.244.1.0/24 via ...`).
        op: String,
        /// The kernel's errno; see [`NetlinkError::errno`].
        source: std::io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("{op}: cannot decode the kernel's answer: {detail}")]
    Decode {
        /// What was asked.
        op: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// A link looked up by name does not exist.
    #[error("link {0} not found")]
    LinkNotFound(String),
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a kernel error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What callers need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index (`ifindex`).
    pub index: u32,
    /// Interface name (`IFLA_IFNAME`).
    pub name: String,
    /// Hardware address; `None` when the link has no 6-byte one (IP tunnels, for example).
    pub mac: Option<[u8; 6]>,
    /// MTU, when the kernel reported one.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up (`IFF_UP`).
    pub up: bool,
    /// Link type (`IFLA_INFO_KIND`: `veth`, `vxlan`, `bridge`, ...); `None` for physical devices
    /// and loopback.
    pub kind: Option<String>,
}

/// A route in the main table, as far as flatnet uses routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Ipv4Net,
    /// Next hop; `None` for a directly connected destination.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// `scope link`: the destination is on the link itself (no gateway needed).
    pub scope_link: bool,
    /// Route the gateway even if it is not on a connected subnet (`onlink`).
    pub onlink: bool,
}

/// What [`Handle::create_vxlan`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Source address of the encapsulated packets.
    pub local: Ipv4Addr,
    /// Link the encapsulated packets leave by.
    pub underlay_index: u32,
    /// UDP destination port.
    pub port: u16,
    /// MTU of the device; the caller leaves room for the 50-byte VXLAN header.
    pub mtu: u32,
    /// MAC address of the device; the kernel picks a random one when `None`.
    pub mac: Option<[u8; 6]>,
}

/// A link and, when it is a VXLAN device, its VXLAN parameters as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    /// The link itself.
    pub link: Link,
    /// VXLAN network identifier; `None` when the link is not a VXLAN device.
    pub vni: Option<u32>,
    /// Source address of the encapsulated packets.
    pub local: Option<Ipv4Addr>,
    /// Index of the link the encapsulated packets leave by.
    pub underlay_index: Option<u32>,
    /// UDP destination port.
    pub port: Option<u16>,
    /// Whether the device learns remote MACs from received packets (flatnet wants `false`).
    pub learning: Option<bool>,
}

/// An rtnetlink socket: one request at a time, each acknowledged, in the namespace it was opened
/// in.
pub struct Handle {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

const RTNH_F_ONLINK: u32 = 4;

impl Handle {
    /// A socket in the calling thread's namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Strict checking makes the kernel filter dumps by the header fields we set.
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A socket bound to `ns` (created inside it; the thread returns afterwards).
    pub fn in_netns(ns: &NetNs) -> Result<Self, NetlinkError> {
        ns.run(Self::new)?
    }

    fn request(
        &mut self,
        op: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let len = packet.buffer_len();
        let mut out = vec![0u8; len];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| NetlinkError::Kernel { op: op(), source })?;

        let mut answers = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| NetlinkError::Kernel { op: op(), source })?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NetlinkError::Decode {
                            op: op(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number != self.seq {
                    // A late answer to an earlier request: skip it.
                    offset += len.max(1);
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op(),
                                source: errno(code),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        answers.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Sends a delete request; `Ok(false)` when the kernel answers `absent` (nothing to delete).
    fn delete(
        &mut self,
        op: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        absent: i32,
    ) -> Result<bool, NetlinkError> {
        match self.request(op, msg, NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(absent) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- links ----

    /// A link by name; `Ok(None)` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            || format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let msg = LinkMessage::default();
        let answers = self.request(
            || "list links".into(),
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair: `name` here, `peer` born inside the namespace `peer_ns` (so it
    /// never appears in this namespace under a name that could collide).
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: RawFd,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_ns));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            || format!("create veth {name} with peer {peer}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Creates a VXLAN device without learning, with a chosen MAC address if `spec.mac` is set
    /// (a stable VTEP MAC survives re-creating the device).
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Local(spec.local),
                InfoVxlan::Link(spec.underlay_index),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.request(
            || format!("create vxlan {}", spec.name),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// A VXLAN link by name with its VXLAN parameters; `Ok(None)` when there is no link of
    /// that name (a link of another kind is returned with `vni: None`).
    pub fn vxlan(&mut self, name: &str) -> Result<Option<VxlanLink>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answers = match self.request(
            || format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(answers) => answers,
            Err(e) if e.errno() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(m) = answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut out = VxlanLink {
            link: to_link(&m),
            vni: None,
            local: None,
            underlay_index: None,
            port: None,
            learning: None,
        };
        for a in &m.attributes {
            let LinkAttribute::LinkInfo(infos) = a else {
                continue;
            };
            for i in infos {
                let LinkInfo::Data(InfoData::Vxlan(attrs)) = i else {
                    continue;
                };
                for v in attrs {
                    match v {
                        InfoVxlan::Id(id) => out.vni = Some(*id),
                        InfoVxlan::Local(ip) => out.local = Some(*ip),
                        InfoVxlan::Link(idx) => out.underlay_index = Some(*idx),
                        InfoVxlan::Port(p) => out.port = Some(*p),
                        InfoVxlan::Learning(l) => out.learning = Some(*l),
                        _ => {}
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            || format!("set mtu {mtu} on link {index}"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Sets a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("set link {index} up"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Deletes a link by name; `Ok(false)` when there was none.
    pub fn del_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.delete(
            || format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            libc::ENODEV,
        )
    }

    /// Deletes a link by index (an index is never reused for another link of this
    /// namespace soon, unlike a name); `Ok(false)` when there was none.
    pub fn del_link_index(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.delete(
            || format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            libc::ENODEV,
        )
    }

    // ---- addresses ----

    fn addr_msg(index: u32, addr: Ipv4Net) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
        msg
    }

    /// Adds an IPv4 address to a link, replacing an equal one (idempotent).
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let msg = Self::addr_msg(index, addr);
        self.request(
            || format!("add address {addr} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// IPv4 addresses on a link.
    pub fn addrs(&mut self, index: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        let answers = self.request(
            || format!("list addresses of link {index}"),
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answers {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if a.header.index != index {
                    continue;
                }
                for attr in &a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = attr
                        && let Ok(net) = Ipv4Net::new(*ip, a.header.prefix_len)
                    {
                        out.push(net);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes an IPv4 address from a link; `Ok(false)` when it was not there.
    pub fn del_addr(&mut self, index: u32, addr: Ipv4Net) -> Result<bool, NetlinkError> {
        let msg = Self::addr_msg(index, addr);
        self.delete(
            || format!("delete address {addr} from link {index}"),
            RouteNetlinkMessage::DelAddress(msg),
            libc::EADDRNOTAVAIL,
        )
    }

    // ---- routes ----

    fn route_msg(route: &Route) -> RouteMessage {
        Self::route_msg_as(route, RouteProtocol::Static)
    }

    fn route_msg_as(route: &Route, protocol: RouteProtocol) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = protocol;
        msg.header.scope = if route.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        msg.header.kind = RouteType::Unicast;
        if route.onlink {
            msg.header.flags =
                netlink_packet_route::route::RouteFlags::from_bits_retain(RTNH_F_ONLINK);
        }
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                route.dst.network(),
            )));
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }

    /// Adds or replaces a route (idempotent).
    pub fn replace_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.request(
            || format!("add route {}", route.dst),
            RouteNetlinkMessage::NewRoute(Self::route_msg(route)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Deletes a route; `Ok(false)` when there was none.
    pub fn del_route(&mut self, route: &Route) -> Result<bool, NetlinkError> {
        self.delete(
            || format!("delete route {}", route.dst),
            RouteNetlinkMessage::DelRoute(Self::route_msg(route)),
            libc::ESRCH,
        )
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        self.dump_routes(None)
    }

    /// Adds or replaces a route tagged with routing protocol number `protocol` (`ip route ...
    /// proto N`), so its owner can find it again with [`Handle::routes_of_protocol`].
    pub fn replace_route_as(&mut self, route: &Route, protocol: u8) -> Result<(), NetlinkError> {
        self.request(
            || format!("add route {} proto {protocol}", route.dst),
            RouteNetlinkMessage::NewRoute(Self::route_msg_as(route, RouteProtocol::from(protocol))),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Deletes a route only if it carries `protocol`; `Ok(false)` when there was none.
    pub fn del_route_as(&mut self, route: &Route, protocol: u8) -> Result<bool, NetlinkError> {
        self.delete(
            || format!("delete route {} proto {protocol}", route.dst),
            RouteNetlinkMessage::DelRoute(Self::route_msg_as(route, RouteProtocol::from(protocol))),
            libc::ESRCH,
        )
    }

    /// IPv4 routes of the main table that carry routing protocol number `protocol`.
    pub fn routes_of_protocol(&mut self, protocol: u8) -> Result<Vec<Route>, NetlinkError> {
        self.dump_routes(Some(protocol))
    }

    fn dump_routes(&mut self, protocol: Option<u8>) -> Result<Vec<Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        if let Some(p) = protocol {
            // With strict checking the kernel filters on it; checked below as well.
            msg.header.protocol = RouteProtocol::from(p);
        }
        let answers = self.request(
            || "list routes".into(),
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN || r.header.kind != RouteType::Unicast {
                continue;
            }
            if protocol.is_some_and(|p| u8::from(r.header.protocol) != p) {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Ok(dst) = Ipv4Net::new(dst, r.header.destination_prefix_length) else {
                continue;
            };
            out.push(Route {
                dst,
                gateway,
                oif,
                scope_link: r.header.scope == RouteScope::Link,
                onlink: r.header.flags.bits() & RTNH_F_ONLINK != 0,
            });
        }
        Ok(out)
    }

    // ---- neighbours ----

    fn neigh_msg(index: u32, ip: Ipv4Addr, mac: Option<[u8; 6]>, bridge: bool) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if bridge {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        if bridge {
            msg.header.flags = NeighbourFlags::Own;
        }
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        if let Some(mac) = mac {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        msg
    }

    /// A permanent ARP entry `ip -> mac` on link `index` (added or replaced).
    pub fn replace_neigh(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.request(
            || format!("add neighbour {ip} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(Self::neigh_msg(index, ip, Some(mac), false)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Deletes the ARP entry for `ip` on link `index`; `Ok(false)` when there was none.
    pub fn del_neigh(&mut self, index: u32, ip: Ipv4Addr) -> Result<bool, NetlinkError> {
        self.delete(
            || format!("delete neighbour {ip} on link {index}"),
            RouteNetlinkMessage::DelNeighbour(Self::neigh_msg(index, ip, None, false)),
            libc::ENOENT,
        )
    }

    /// A VXLAN forwarding entry: frames for `mac` go to the VTEP at `dst` (`bridge fdb append`).
    pub fn replace_fdb(
        &mut self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        self.request(
            || format!("add fdb entry for {dst} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Deletes the forwarding entry `mac -> dst` of a VXLAN link; `Ok(false)` when there was none.
    pub fn del_fdb(
        &mut self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<bool, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        self.delete(
            || format!("delete fdb entry for {dst} on link {index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            libc::ENOENT,
        )
    }

    /// Permanent IPv4 neighbours: (link index, ip, mac).
    pub fn neighbours(&mut self) -> Result<Vec<(u32, Ipv4Addr, [u8; 6])>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answers = self.request(
            || "list neighbours".into(),
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((n.header.ifindex, ip, mac));
            }
        }
        Ok(out)
    }

    /// Unicast VXLAN forwarding entries of link `index` that name a remote VTEP: (mac, dst).
    pub fn fdb(&mut self, index: u32) -> Result<Vec<([u8; 6], Ipv4Addr)>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        let answers = self.request(
            || format!("list fdb entries of link {index}"),
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => dst = Some(*v),
                    // In AF_BRIDGE messages the decoder cannot tell the address family.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst)
                && mac[0] & 1 == 0
                && mac != [0; 6]
            {
                out.push((mac, dst));
            }
        }
        Ok(out)
    }
}

fn errno(code: NonZeroI32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code.get().abs())
}

fn mac6(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn to_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(mac) => link.mac = mac6(mac),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// `aa:bb:cc:dd:ee:ff`
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}
