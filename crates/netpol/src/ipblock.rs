//! `ipBlock`: a CIDR minus its `except` CIDRs, as sorted disjoint IPv4 prefixes (what an
//! nftables interval set holds).

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

/// Sorted, disjoint, aggregated IPv4 prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct IpBlockSet {
    prefixes: Vec<Ipv4Net>,
}

impl IpBlockSet {
    /// `cidr` (host bits ignored, as the API server accepts them) minus every `except`.
    /// IPv6 CIDRs contribute nothing: only IPv4 is evaluated.
    pub fn cidr_except(cidr: IpNet, except: &[IpNet]) -> IpBlockSet {
        let IpNet::V4(cidr) = cidr else {
            return IpBlockSet::default();
        };
        let mut parts = vec![cidr.trunc()];
        for ex in except {
            let IpNet::V4(ex) = ex else { continue };
            let ex = ex.trunc();
            parts = parts.into_iter().flat_map(|p| subtract(p, ex)).collect();
        }
        IpBlockSet::from_prefixes(parts)
    }

    /// Normalizes any prefixes (overlapping, unsorted) into a set.
    pub fn from_prefixes(prefixes: Vec<Ipv4Net>) -> IpBlockSet {
        IpBlockSet {
            prefixes: Ipv4Net::aggregate(&prefixes),
        }
    }

    pub fn prefixes(&self) -> &[Ipv4Net] {
        &self.prefixes
    }
}

/// Whether sorted disjoint `prefixes` contain `ip` (binary search).
pub(crate) fn contains(prefixes: &[Ipv4Net], ip: Ipv4Addr) -> bool {
    let after = prefixes.partition_point(|p| p.network() <= ip);
    after > 0 && prefixes[after - 1].contains(&ip)
}

/// `p` minus `ex`, as at most 32 prefixes.
fn subtract(p: Ipv4Net, ex: Ipv4Net) -> Vec<Ipv4Net> {
    if ex.contains(&p) {
        return Vec::new();
    }
    if !p.contains(&ex) {
        return vec![p];
    }
    // `p` strictly contains `ex`: keep the half without it, recurse into the other.
    let mut out = Vec::new();
    let mut cur = p;
    while cur != ex {
        let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
            // Only a /32 has no halves, and a /32 strictly containing `ex` cannot exist.
            break;
        };
        let (Some(lo), Some(hi)) = (halves.next(), halves.next()) else {
            break;
        };
        if lo.contains(&ex) {
            out.push(hi);
            cur = lo;
        } else {
            out.push(lo);
            cur = hi;
        }
    }
    out
}
