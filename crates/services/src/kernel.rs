//! [`NetnsProxy`]: the only code of this crate that touches the kernel, through `datapath`,
//! inside the node's network namespace.

use std::net::Ipv4Addr;
use std::path::Path;

use datapath::{Handle, nft};
use ipnet::Ipv4Net;

use crate::plan::{self as svc, Backend as SvcBackend, ElemOp, Frontend, Key, Value};
use crate::proxy::{KernelError, ProxyDataplane};

/// A node's network namespace (or the caller's own) as the service proxy programs it: the
/// table's structure through `nft -f`, elements over one nfnetlink socket (opened on first
/// use), LoadBalancer addresses over rtnetlink, conntrack through the `conntrack` tool.
pub struct NetnsProxy {
    tables: nft::Tables,
    handle: Handle,
}

impl std::fmt::Debug for NetnsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsProxy")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// Why the proxy's namespace cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The namespace path does not open.
    #[error(transparent)]
    Netns(#[from] datapath::NetnsError),
    /// No rtnetlink socket inside it.
    #[error("open netlink in {ns}: {source}")]
    Netlink {
        /// The namespace (`own` for the caller's).
        ns: String,
        /// What netlink said.
        source: datapath::NetlinkError,
    },
}

impl NetnsProxy {
    /// Opens `netns` (a path such as `/run/netns/NAME`); `None` means the caller's own.
    pub fn open(netns: Option<&Path>) -> Result<Self, OpenError> {
        let tables = nft::Tables::open(netns)?;
        let handle = match tables.netns() {
            Some(ns) => Handle::in_netns(ns),
            None => Handle::new(),
        }
        .map_err(|source| OpenError::Netlink {
            ns: netns.map_or("own".into(), |p| p.display().to_string()),
            source,
        })?;
        Ok(NetnsProxy { tables, handle })
    }

    fn ns_path(&self) -> Option<&Path> {
        self.tables.netns_path()
    }
}

/// The service proxy's table: structure through `nft -f`, elements through one nfnetlink
/// batch per transaction, conntrack through the `conntrack` tool.
impl ProxyDataplane for NetnsProxy {
    fn nft_script(&mut self, script: &str) -> Result<(), KernelError> {
        Ok(self.tables.run_script(script)?)
    }

    fn nft_elements(&mut self, ops: &[ElemOp], flush: bool) -> Result<(), KernelError> {
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
        Ok(self.tables.socket()?.commit(&batch)?)
    }

    fn nft_chains(&mut self) -> Result<Vec<String>, KernelError> {
        Ok(datapath::tools::nft_chains(
            self.ns_path(),
            "inet",
            svc::TABLE,
        )?)
    }

    fn forget_udp(&mut self, fe: &Frontend, endpoint: Option<Ipv4Addr>) -> Result<(), KernelError> {
        Ok(datapath::tools::conntrack_delete_udp(self.ns_path(), fe.ip, fe.port, endpoint)
            .map(|n| {
                if n > 0 {
                    tracing::info!(frontend = %fe, endpoint = ?endpoint, flows = n, "forgot stale UDP flows");
                }
            })?)
    }

    fn announce(
        &mut self,
        dev: &str,
        pool: Ipv4Net,
        ips: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Result<(), KernelError> {
        let nl = |op: String| move |source| KernelError::Netlink { op, source };
        let link = self
            .handle
            .link(dev)
            .map_err(nl(format!("get link {dev}")))?
            .ok_or_else(|| KernelError::NoDevice(dev.to_string()))?;
        let held: Vec<Ipv4Net> = self
            .handle
            .addrs(link.index)
            .map_err(nl(format!("list addresses of {dev}")))?
            .into_iter()
            .filter(|a| a.prefix_len() == 32 && pool.contains(&a.addr()))
            .collect();
        for a in &held {
            if !ips.contains(&a.addr()) {
                self.handle
                    .del_addr(link.index, *a)
                    .map_err(nl(format!("delete LoadBalancer address {a} from {dev}")))?;
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
                .map_err(nl(format!("add LoadBalancer address {net} on {dev}")))?;
            tracing::info!(ip = %ip, dev, "announcing LoadBalancer IP");
            if let Err(e) = datapath::tools::gratuitous_arp(self.ns_path(), dev, *ip) {
                tracing::warn!(ip = %ip, error = %e, "gratuitous ARP failed; neighbours learn the new owner when their ARP entry expires");
            }
        }
        Ok(())
    }

    fn forget_affinity(&mut self, mark: u32, gone: &[SvcBackend]) -> Result<(), KernelError> {
        use nft::{Data, Field, FieldKind};
        let nft = self.tables.socket()?;
        let elems = nft.list_elements(
            svc::TABLE,
            svc::maps::AFFINITY,
            &[FieldKind::Ipv4, FieldKind::Mark],
            Some(&[FieldKind::Ipv4, FieldKind::Port]),
        )?;
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
        Ok(nft.commit(&batch)?)
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
