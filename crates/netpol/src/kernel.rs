//! [`NetnsPolicy`]: the only code of this crate that touches the kernel, through `datapath`,
//! inside the node's network namespace.

use std::path::Path;

use datapath::{NetNs, nft};

use crate::nft::{self as pol, AllowRange, PolicyOp};
use crate::run::{KernelError, PolicyDataplane};

/// A node's network namespace (or the caller's own) as policy enforcement programs it:
/// structure through `nft -f`, elements over one nfnetlink socket opened on first use.
pub struct NetnsPolicy {
    ns: Option<NetNs>,
    nft: Option<nft::Nft>,
}

impl std::fmt::Debug for NetnsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsPolicy")
            .field("ns", &self.ns.as_ref().map(|n| n.path()))
            .finish_non_exhaustive()
    }
}

impl NetnsPolicy {
    /// Opens `netns` (a path such as `/run/netns/NAME`); `None` means the caller's own.
    pub fn open(netns: Option<&Path>) -> Result<Self, datapath::NetnsError> {
        let ns = netns.map(NetNs::open).transpose()?;
        Ok(NetnsPolicy { ns, nft: None })
    }

    fn ns_path(&self) -> Option<&Path> {
        self.ns.as_ref().map(NetNs::path)
    }

    fn nft(&mut self) -> Result<&mut nft::Nft, KernelError> {
        let nft = match self.nft.take() {
            Some(nft) => nft,
            None => nft::Nft::open(self.ns_path())?,
        };
        Ok(self.nft.insert(nft))
    }
}

/// The policy table: structure through `nft -f`, elements through one nfnetlink batch per
/// transaction (the allow sets are concatenated interval sets: one range per field).
impl PolicyDataplane for NetnsPolicy {
    fn policy_script(&mut self, script: &str) -> Result<(), KernelError> {
        Ok(nft::run_script(self.ns_path(), script)?)
    }

    fn policy_elements(&mut self, ops: &[PolicyOp], flush: bool) -> Result<(), KernelError> {
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
        Ok(self.nft()?.commit(&batch)?)
    }
}
