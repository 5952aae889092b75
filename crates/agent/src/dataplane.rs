//! The seam between the agent and the kernel: [`Dataplane`], implemented for real by
//! [`crate::NetnsDataplane`] and in memory by [`MemDataplane`] (for tests of the agent loop,
//! and as an executable statement of what each [`Change`] means).

use crate::plan::{Change, NodePlan, UnderlayInfo, VXLAN_DEVICE};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netns(#[from] datapath::NetnsError),
    #[error("underlay device {dev}: {reason}")]
    Underlay { dev: String, reason: String },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: datapath::NetlinkError,
    },
    #[error(transparent)]
    Sysctl(#[from] datapath::sysctl::SysctlError),
    /// Some changes failed; the others were applied.
    #[error("{} of {total} changes failed: {}", failed.len(), failed.join("; "))]
    Apply { failed: Vec<String>, total: usize },
    #[error("{0}")]
    Other(String),
}

/// What the agent needs from a node's network namespace. Calls block (netlink is quick);
/// the agent runs them off the async threads.
pub trait Dataplane: Send + 'static {
    /// The underlay link: its first IPv4 address and MTU.
    fn underlay(&mut self, dev: &str) -> Result<UnderlayInfo, DataplaneError>;

    /// What the agent owns in the namespace now, read back as a plan: routes tagged
    /// [`crate::plan::ROUTE_PROTOCOL`], the VXLAN device [`VXLAN_DEVICE`] (only when it is up)
    /// with its addresses, permanent neighbours and FDB entries, and the sysctls it sets.
    fn observe(&mut self) -> Result<NodePlan, DataplaneError>;

    /// Applies every change in order, going on after a failure; [`DataplaneError::Apply`]
    /// lists the failures.
    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError>;
}

/// An in-memory dataplane: a [`NodePlan`] that changes as the kernel would (a deleted device
/// takes its entries along, an `Add` replaces the item under the same key). Every call is
/// recorded, so tests can assert what was (not) touched.
#[derive(Debug, Clone)]
pub struct MemDataplane {
    pub underlay: UnderlayInfo,
    pub state: NodePlan,
    /// Every change applied, in order.
    pub applied: Vec<Change>,
    /// When set, `observe` and `apply` fail with this message.
    pub fail: Option<String>,
    /// The service proxy's side.
    pub nft: MemNft,
    /// The policy table's side.
    pub policy: MemPolicy,
}

/// The policy table in memory: elements per set, the scripts run, the transactions.
#[derive(Debug, Clone, Default)]
pub struct MemPolicy {
    /// Address sets: set -> addresses.
    pub addrs: std::collections::BTreeMap<String, std::collections::BTreeSet<std::net::Ipv4Addr>>,
    /// Interval sets: set -> ranges.
    pub ranges:
        std::collections::BTreeMap<String, std::collections::BTreeSet<crate::policy::AllowRange>>,
    pub scripts: Vec<String>,
    /// Element transactions: (number of operations, flushed first).
    pub transactions: Vec<(usize, bool)>,
    /// When set, every call fails with this message.
    pub fail: Option<String>,
}

impl MemPolicy {
    /// Every element as `nft` prints it, `set: element`, sorted.
    pub fn elements(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .addrs
            .iter()
            .flat_map(|(set, ips)| ips.iter().map(move |ip| format!("{set}: {ip}")))
            .chain(
                self.ranges
                    .iter()
                    .flat_map(|(set, rs)| rs.iter().map(move |r| format!("{set}: {r}"))),
            )
            .collect();
        out.sort();
        out
    }
}

impl crate::policy::PolicyDataplane for MemDataplane {
    fn policy_script(&mut self, script: &str) -> Result<(), String> {
        let p = &mut self.policy;
        if let Some(f) = &p.fail {
            return Err(f.clone());
        }
        p.scripts.push(script.to_string());
        Ok(())
    }

    /// Like the kernel, refuses (and then changes nothing) to delete what is not there and
    /// to add an address twice; stricter than the kernel, refuses any range that overlaps
    /// one the set holds.
    fn policy_elements(
        &mut self,
        ops: &[crate::policy::PolicyOp],
        flush: bool,
    ) -> Result<(), String> {
        use crate::policy::PolicyOp;
        let p = &mut self.policy;
        if let Some(f) = &p.fail {
            return Err(f.clone());
        }
        let (mut addrs, mut ranges) = (p.addrs.clone(), p.ranges.clone());
        if flush {
            addrs.clear();
            ranges.clear();
        }
        for op in ops {
            let set = op.set().to_string();
            match op {
                PolicyOp::AddAddr { ip, .. } => {
                    addrs.entry(set).or_default().insert(*ip);
                }
                PolicyOp::DelAddr { ip, .. } => {
                    if !addrs.entry(set.clone()).or_default().remove(ip) {
                        return Err(format!(
                            "set {set}: delete element {ip}: No such file or directory"
                        ));
                    }
                }
                PolicyOp::AddRange { range, .. } => {
                    let held = ranges.entry(set.clone()).or_default();
                    if let Some(o) = held.iter().find(|o| *o != range && o.overlaps(range)) {
                        return Err(format!(
                            "set {set}: add element {range}: overlaps {o}: File exists"
                        ));
                    }
                    held.insert(*range);
                }
                PolicyOp::DelRange { range, .. } => {
                    if !ranges.entry(set.clone()).or_default().remove(range) {
                        return Err(format!(
                            "set {set}: delete element {range}: No such file or directory"
                        ));
                    }
                }
            }
        }
        p.addrs = addrs;
        p.ranges = ranges;
        p.transactions.push((ops.len(), flush));
        Ok(())
    }
}

/// The service proxy's table in memory: elements as their `nft` text, the scripts run, the
/// cleanups asked for.
#[derive(Debug, Clone, Default)]
pub struct MemNft {
    /// `(map, key)` -> value, as `render_ops` prints them.
    pub elements: std::collections::BTreeMap<(String, String), String>,
    pub chains: std::collections::BTreeSet<String>,
    /// Chain -> its rules.
    pub rules: std::collections::BTreeMap<String, Vec<String>>,
    pub scripts: Vec<String>,
    /// Element transactions: (number of operations, flushed first).
    pub transactions: Vec<(usize, bool)>,
    pub forgotten_udp: Vec<String>,
    pub forgotten_affinity: Vec<(u32, Vec<String>)>,
    /// LoadBalancer IPs announced on the underlay.
    pub announced: std::collections::BTreeSet<std::net::Ipv4Addr>,
    /// When set, every call fails with this message.
    pub fail: Option<String>,
}

impl crate::proxy::ProxyDataplane for MemDataplane {
    /// Keeps chains and their rules; like the kernel, refuses (and then changes nothing) to
    /// delete a chain that a rule or a map element still jumps to.
    fn nft_script(&mut self, script: &str) -> Result<(), String> {
        let n = &mut self.nft;
        if let Some(f) = &n.fail {
            return Err(f.clone());
        }
        let mut rules = n.rules.clone();
        for line in script.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["add", "chain", _, _, name, ..] => {
                    rules.entry((*name).to_string()).or_default();
                }
                ["flush", "chain", _, _, name] => {
                    rules.insert((*name).to_string(), Vec::new());
                }
                ["add", "rule", _, _, name, rest @ ..] => {
                    rules
                        .entry((*name).to_string())
                        .or_default()
                        .push(rest.join(" "));
                }
                ["delete", "chain", _, _, name] => {
                    let target = [format!("goto {name}"), format!("jump {name}")];
                    let used_by_rule = rules.iter().any(|(c, rs)| {
                        c != name
                            && rs.iter().any(|r| {
                                target.iter().any(|t| {
                                    r.ends_with(t.as_str()) || r.contains(&format!("{t} "))
                                })
                            })
                    });
                    let used_by_element = n.elements.values().any(|v| target.contains(v));
                    if used_by_rule || used_by_element {
                        return Err(format!("delete chain {name}: Device or resource busy"));
                    }
                    rules.remove(*name);
                }
                _ => {}
            }
        }
        n.chains = rules.keys().cloned().collect();
        n.rules = rules;
        n.scripts.push(script.to_string());
        Ok(())
    }

    fn nft_elements(&mut self, ops: &[plan::services::ElemOp], flush: bool) -> Result<(), String> {
        use plan::services::{ElemOp, STATIC_MAPS, render_ops};
        let n = &mut self.nft;
        if let Some(f) = &n.fail {
            return Err(f.clone());
        }
        let mut next = n.elements.clone();
        if flush {
            next.retain(|(map, _), _| !STATIC_MAPS.contains(&map.as_str()));
        }
        for op in ops {
            // "add element inet flatnet MAP { KEY : VALUE }"
            let text = render_ops(std::slice::from_ref(op));
            let inner = text
                .split_once('{')
                .and_then(|(_, r)| r.rsplit_once('}'))
                .map(|(i, _)| i.trim().to_string())
                .unwrap_or_default();
            let (key, value) = match inner.split_once(" : ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (inner, String::new()),
            };
            match op {
                ElemOp::Add { map, .. } => {
                    if next.insert((map.to_string(), key.clone()), value).is_some() {
                        return Err(format!("map {map}: add element {key}: File exists"));
                    }
                }
                ElemOp::Delete { map, .. } => {
                    if next.remove(&(map.to_string(), key.clone())).is_none() {
                        return Err(format!(
                            "map {map}: delete element {key}: No such file or directory"
                        ));
                    }
                }
            }
        }
        n.elements = next;
        n.transactions.push((ops.len(), flush));
        Ok(())
    }

    fn nft_chains(&mut self) -> Result<Vec<String>, String> {
        Ok(self.nft.chains.iter().cloned().collect())
    }

    fn announce(
        &mut self,
        _dev: &str,
        pool: ipnet::Ipv4Net,
        ips: &std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> Result<(), String> {
        if let Some(outside) = ips.iter().find(|ip| !pool.contains(*ip)) {
            return Err(format!("{outside} is outside the pool {pool}"));
        }
        self.nft.announced = ips.clone();
        Ok(())
    }

    fn forget_udp(
        &mut self,
        fe: &plan::services::Frontend,
        endpoint: Option<std::net::Ipv4Addr>,
    ) -> Result<(), String> {
        self.nft.forgotten_udp.push(match endpoint {
            Some(ep) => format!("{fe} via {ep}"),
            None => fe.to_string(),
        });
        Ok(())
    }

    fn forget_affinity(
        &mut self,
        mark: u32,
        gone: &[plan::services::Backend],
    ) -> Result<(), String> {
        self.nft
            .forgotten_affinity
            .push((mark, gone.iter().map(ToString::to_string).collect()));
        Ok(())
    }
}

impl MemDataplane {
    pub fn new(underlay: UnderlayInfo) -> Self {
        MemDataplane {
            underlay,
            state: NodePlan::default(),
            applied: Vec::new(),
            fail: None,
            nft: MemNft::default(),
            policy: MemPolicy::default(),
        }
    }

    fn dev_exists(&self, dev: &str) -> bool {
        dev == self.underlay.dev || self.state.vxlan.as_ref().is_some_and(|v| v.name == dev)
    }

    fn drop_device(&mut self, dev: &str) {
        let s = &mut self.state;
        if s.vxlan.as_ref().is_some_and(|v| v.name == dev) {
            s.vxlan = None;
        }
        s.addresses.retain(|a| a.dev != dev);
        s.routes.retain(|r| r.dev != dev);
        s.neighbours.retain(|n| n.dev != dev);
        s.fdb.retain(|f| f.dev != dev);
    }

    /// One change, as the kernel would take it.
    pub fn apply_one(&mut self, change: &Change) -> Result<(), String> {
        let missing = |dev: &str| format!("{change}: device {dev} not found");
        match change {
            Change::SetSysctl { key, value } => {
                self.state.sysctls.insert(key.clone(), value.clone());
            }
            Change::AddVxlan(d) => {
                if !self.dev_exists(&d.underlay) {
                    return Err(missing(&d.underlay));
                }
                self.drop_device(&d.name);
                self.state.vxlan = Some(d.clone());
            }
            Change::DelVxlan(d) => self.drop_device(&d.name),
            Change::SetMtu { dev, mtu } => match self.state.vxlan.as_mut() {
                Some(v) if v.name == *dev => v.mtu = *mtu,
                _ => return Err(missing(dev)),
            },
            Change::AddAddress(a) => {
                if !self.dev_exists(&a.dev) {
                    return Err(missing(&a.dev));
                }
                self.state.addresses.insert(a.clone());
            }
            Change::DelAddress(a) => {
                self.state.addresses.remove(a);
            }
            Change::AddRoute(r) => {
                if !self.dev_exists(&r.dev) {
                    return Err(missing(&r.dev));
                }
                self.state.routes.retain(|o| o.dst != r.dst);
                self.state.routes.insert(r.clone());
            }
            Change::DelRoute(r) => {
                self.state.routes.remove(r);
            }
            Change::AddNeighbour(n) => {
                if !self.dev_exists(&n.dev) {
                    return Err(missing(&n.dev));
                }
                self.state
                    .neighbours
                    .retain(|o| (o.dev.as_str(), o.ip) != (n.dev.as_str(), n.ip));
                self.state.neighbours.insert(n.clone());
            }
            Change::DelNeighbour(n) => {
                self.state
                    .neighbours
                    .retain(|o| (o.dev.as_str(), o.ip) != (n.dev.as_str(), n.ip));
            }
            Change::AddFdb(f) => {
                if !self.dev_exists(&f.dev) {
                    return Err(missing(&f.dev));
                }
                self.state
                    .fdb
                    .retain(|o| (o.dev.as_str(), o.mac) != (f.dev.as_str(), f.mac));
                self.state.fdb.insert(f.clone());
            }
            Change::DelFdb(f) => {
                self.state.fdb.remove(f);
            }
        }
        Ok(())
    }
}

impl Dataplane for MemDataplane {
    fn underlay(&mut self, dev: &str) -> Result<UnderlayInfo, DataplaneError> {
        if dev != self.underlay.dev {
            return Err(DataplaneError::Underlay {
                dev: dev.to_string(),
                reason: "not found".into(),
            });
        }
        Ok(self.underlay.clone())
    }

    fn observe(&mut self) -> Result<NodePlan, DataplaneError> {
        if let Some(msg) = &self.fail {
            return Err(DataplaneError::Other(msg.clone()));
        }
        debug_assert!(
            self.state
                .vxlan
                .as_ref()
                .is_none_or(|v| v.name == VXLAN_DEVICE)
        );
        Ok(self.state.clone())
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        if let Some(msg) = &self.fail {
            return Err(DataplaneError::Other(msg.clone()));
        }
        let mut failed = Vec::new();
        for change in changes {
            self.applied.push(change.clone());
            if let Err(e) = self.apply_one(change) {
                failed.push(e);
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
