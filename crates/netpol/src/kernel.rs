//! [`NetnsPolicy`]: the only code of this crate that touches the kernel, through `datapath`,
//! inside the node's network namespace.

use std::path::Path;

use datapath::nft;

use crate::nft::{self as pol, AllowRange, PolicyOp};
use crate::run::{KernelError, PolicyDataplane};

/// A node's network namespace (or the caller's own) as policy enforcement programs it:
/// structure through `nft -f`, elements over one nfnetlink socket opened on first use.
#[derive(Debug)]
pub struct NetnsPolicy {
    tables: nft::Tables,
}

impl NetnsPolicy {
    /// Opens `netns` (a path such as `/run/netns/NAME`); `None` means the caller's own.
    pub fn open(netns: Option<&Path>) -> Result<Self, datapath::NetnsError> {
        Ok(NetnsPolicy {
            tables: nft::Tables::open(netns)?,
        })
    }
}

/// The policy table: structure through `nft -f`, elements through one nfnetlink batch per
/// transaction (the allow sets are concatenated interval sets: one range per field).
impl PolicyDataplane for NetnsPolicy {
    fn policy_script(&mut self, script: &str) -> Result<(), KernelError> {
        Ok(self.tables.run_script(script)?)
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
        Ok(self.tables.socket()?.commit(&batch)?)
    }
}
