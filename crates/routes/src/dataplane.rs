//! The seam between pod routing and the kernel: [`Dataplane`], implemented for real by
//! `NetnsRoutes` (`kernel`) and in memory by [`MemRoutes`] (for tests of the loop, and as an
//! executable statement of what each [`Change`] means).

use crate::plan::{Change, NodePlan, UnderlayInfo, VXLAN_DEVICE};

/// Why reading or changing the node's namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Entering the node's network namespace failed.
    #[cfg(feature = "kernel")]
    #[error(transparent)]
    Netns(#[from] datapath::NetnsError),
    /// The underlay link is missing or unusable.
    #[error("underlay device {dev}: {reason}")]
    Underlay {
        /// The underlay link's name.
        dev: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A netlink request failed.
    #[cfg(feature = "kernel")]
    #[error("{op}: {source}")]
    Netlink {
        /// The change or query being made, as text.
        op: String,
        /// The netlink error.
        source: datapath::NetlinkError,
    },
    /// Writing a sysctl failed.
    #[cfg(feature = "kernel")]
    #[error(transparent)]
    Sysctl(#[from] datapath::sysctl::SysctlError),
    /// Some changes failed; the others were applied.
    #[error("{} of {total} changes failed: {}", failed.len(), failed.join("; "))]
    Apply {
        /// One message per failed change, naming the change.
        failed: Vec<String>,
        /// How many changes were given.
        total: usize,
    },
    /// Anything else (a missing device, the fake's injected failure, a worker that died).
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
pub struct MemRoutes {
    /// What [`Dataplane::underlay`] answers for its `dev`.
    pub underlay: UnderlayInfo,
    /// What the namespace holds now.
    pub state: NodePlan,
    /// Every change applied, in order.
    pub applied: Vec<Change>,
    /// When set, `observe` and `apply` fail with this message.
    pub fail: Option<String>,
}

impl MemRoutes {
    /// An empty namespace with only the underlay link; nothing applied, no failure set.
    pub fn new(underlay: UnderlayInfo) -> Self {
        MemRoutes {
            underlay,
            state: NodePlan::default(),
            applied: Vec::new(),
            fail: None,
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

impl Dataplane for MemRoutes {
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
