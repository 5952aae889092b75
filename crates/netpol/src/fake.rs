//! [`MemPolicy`]: the policy table in memory, the fake the loop and the plan tests run against.

use crate::nft::{AllowRange, PolicyOp};
use crate::run::{KernelError, PolicyDataplane};

/// The policy table in memory: elements per set, the scripts run, the transactions.
#[derive(Debug, Clone, Default)]
pub struct MemPolicy {
    /// Address sets: set -> addresses.
    pub addrs: std::collections::BTreeMap<String, std::collections::BTreeSet<std::net::Ipv4Addr>>,
    /// Interval sets: set -> ranges.
    pub ranges: std::collections::BTreeMap<String, std::collections::BTreeSet<AllowRange>>,
    /// Every `nft -f` script run (the table's structure), in order.
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

impl PolicyDataplane for MemPolicy {
    fn policy_script(&mut self, script: &str) -> Result<(), KernelError> {
        let p = self;
        if let Some(f) = &p.fail {
            return Err(KernelError::Refused(f.clone()));
        }
        p.scripts.push(script.to_string());
        Ok(())
    }

    /// Like the kernel, refuses (and then changes nothing) to delete what is not there and
    /// to add an address twice; stricter than the kernel, refuses any range that overlaps
    /// one the set holds.
    fn policy_elements(&mut self, ops: &[PolicyOp], flush: bool) -> Result<(), KernelError> {
        let p = self;
        if let Some(f) = &p.fail {
            return Err(KernelError::Refused(f.clone()));
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
                        return Err(KernelError::Refused(format!(
                            "set {set}: delete element {ip}: No such file or directory"
                        )));
                    }
                }
                PolicyOp::AddRange { range, .. } => {
                    let held = ranges.entry(set.clone()).or_default();
                    if let Some(o) = held.iter().find(|o| *o != range && o.overlaps(range)) {
                        return Err(KernelError::Refused(format!(
                            "set {set}: add element {range}: overlaps {o}: File exists"
                        )));
                    }
                    held.insert(*range);
                }
                PolicyOp::DelRange { range, .. } => {
                    if !ranges.entry(set.clone()).or_default().remove(range) {
                        return Err(KernelError::Refused(format!(
                            "set {set}: delete element {range}: No such file or directory"
                        )));
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
