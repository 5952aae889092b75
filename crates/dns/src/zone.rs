//! The indexed zone (pure): a hash map from each lowercase name to its records, kept up to
//! date one owner (a Service with its slices, a Pod, a Namespace) at a time, and the lookup
//! that turns a question into an answer.
//!
//! Name existence is decided by the map alone: every name that holds a record, and every
//! ancestor of one up to the zone apex (the empty non-terminals such as `svc.<zone>` or
//! `_tcp.<svc>.<ns>.svc.<zone>`), has an entry whose `refs` counts the contributions at or
//! below it. A missing entry is NXDOMAIN; an entry without records of the asked type is
//! NODATA. Both cost one hash lookup, whatever the zone's size.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::records::{self, Rr, ZoneConfig};

/// Who contributed a set of records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// The zone's fixed records.
    Static,
    /// `namespace`
    Namespace(String),
    /// `namespace/name`
    Service(String),
    /// `namespace/name`
    Pod(String),
}

/// FxHash (rustc's): names are short and not attacker-chosen keys of a long-lived table that
/// could be flooded (only our own objects are inserted), so speed wins over SipHash.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Default)]
struct Node {
    /// (owner id, record)
    records: Vec<(u64, Record)>,
    /// Contributions at or below this name; the entry is removed when it drops to 0.
    refs: u32,
}

#[derive(Debug)]
struct Contribution {
    id: u64,
    rrs: Vec<Rr>,
}

/// Where a name belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Inside the cluster domain.
    Cluster,
    /// A reverse name we answer for (an address in the service or pod ranges, or a name
    /// the zone holds).
    Reverse { v6: bool },
    /// Somewhere else: forward it.
    Elsewhere,
}

/// What to send back for one question.
#[derive(Debug, PartialEq)]
pub struct Answer<'a> {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<&'a Record>,
    /// The SOA of the zone for negative answers.
    pub authority: Vec<&'a Record>,
    pub additional: Vec<&'a Record>,
}

impl Answer<'_> {
    fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }
}

/// The outcome of a lookup.
#[derive(Debug, PartialEq)]
pub enum Lookup<'a> {
    Answer(Answer<'a>),
    /// Not ours: ask an upstream (or fail at once when there is none).
    Forward,
}

/// The cluster zone, indexed by name.
#[derive(Debug)]
pub struct Zone {
    cfg: ZoneConfig,
    domain: LowerName,
    in_addr: LowerName,
    ip6: LowerName,
    names: FxMap<LowerName, Node>,
    owners: HashMap<Owner, Contribution>,
    next_id: u64,
    serial: u32,
    soa: Record,
    soa4: Record,
    soa6: Record,
    synced: bool,
}

/// How many CNAMEs inside the zone a lookup follows.
const MAX_CNAME_CHAIN: usize = 8;

impl Zone {
    /// An empty zone holding only its fixed records. It answers SERVFAIL for its names until
    /// [`Zone::set_synced`] (as CoreDNS does before its first sync with the API).
    pub fn new(cfg: ZoneConfig) -> Self {
        let domain = LowerName::new(&cfg.domain);
        let mut zone = Self {
            in_addr: LowerName::new(&Name::from_ascii("in-addr.arpa.").unwrap_or_default()),
            ip6: LowerName::new(&Name::from_ascii("ip6.arpa.").unwrap_or_default()),
            soa: cfg.soa(1),
            soa4: cfg.reverse_soa(false, 1),
            soa6: cfg.reverse_soa(true, 1),
            domain,
            names: FxMap::default(),
            owners: HashMap::new(),
            next_id: 1,
            serial: 1,
            cfg,
            synced: false,
        };
        let fixed = records::static_records(&zone.cfg);
        zone.set(Owner::Static, fixed);
        zone
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.cfg
    }

    /// Marks the zone as loaded from the store: from now on it answers from its records.
    pub fn set_synced(&mut self) {
        self.synced = true;
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The SOA serial: bumped by every change.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Names with an entry (records or empty non-terminals).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Replaces everything `owner` contributed with `rrs`. Returns whether anything changed.
    pub fn set(&mut self, owner: Owner, rrs: Vec<Rr>) -> bool {
        if let Some(old) = self.owners.get(&owner)
            && old.rrs == rrs
        {
            return false;
        }
        let id = match self.owners.remove(&owner) {
            Some(old) => {
                self.withdraw(&old);
                old.id
            }
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
        if rrs.is_empty() {
            self.bump();
            return true;
        }
        for rr in &rrs {
            self.add(id, rr);
        }
        self.owners.insert(owner, Contribution { id, rrs });
        self.bump();
        true
    }

    /// Every owner that contributed records.
    pub fn owners(&self) -> Vec<Owner> {
        self.owners.keys().cloned().collect()
    }

    /// Removes everything `owner` contributed. Returns whether it had contributed anything.
    pub fn remove(&mut self, owner: &Owner) -> bool {
        match self.owners.remove(owner) {
            Some(old) => {
                self.withdraw(&old);
                self.bump();
                true
            }
            None => false,
        }
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(1);
        for soa in [&mut self.soa, &mut self.soa4, &mut self.soa6] {
            if let RData::SOA(s) = &mut soa.data {
                s.serial = self.serial;
            }
        }
    }

    /// The names from `name` up to the apex of its zone (or just `name` outside them).
    fn lineage(&self, name: &LowerName) -> Vec<LowerName> {
        let mut out = vec![name.clone()];
        let mut cur = name.clone();
        let inside =
            self.domain.zone_of(&cur) || self.in_addr.zone_of(&cur) || self.ip6.zone_of(&cur);
        if !inside {
            return out;
        }
        while cur != self.domain && cur != self.in_addr && cur != self.ip6 && cur.num_labels() > 1 {
            cur = cur.base_name();
            out.push(cur.clone());
        }
        out
    }

    fn add(&mut self, id: u64, rr: &Rr) {
        for n in self.lineage(&rr.name) {
            self.names.entry(n).or_default().refs += 1;
        }
        if let Some(r) = &rr.record
            && let Some(node) = self.names.get_mut(&rr.name)
        {
            node.records.push((id, r.clone()));
        }
    }

    fn withdraw(&mut self, c: &Contribution) {
        for rr in &c.rrs {
            if let Some(node) = self.names.get_mut(&rr.name) {
                node.records.retain(|(id, _)| *id != c.id);
            }
            for n in self.lineage(&rr.name) {
                if let Some(node) = self.names.get_mut(&n) {
                    node.refs = node.refs.saturating_sub(1);
                    if node.refs == 0 {
                        self.names.remove(&n);
                    }
                }
            }
        }
    }

    /// Where `name` belongs.
    pub fn authority(&self, name: &LowerName) -> Authority {
        if self.domain.zone_of(name) {
            return Authority::Cluster;
        }
        for (zone, v6) in [(&self.in_addr, false), (&self.ip6, true)] {
            if zone.zone_of(name) {
                let ours = reverse_addr(name)
                    .is_some_and(|ip| self.cfg.reverse_cidrs.iter().any(|c| c.contains(&ip)))
                    || self.names.contains_key(name);
                return if ours {
                    Authority::Reverse { v6 }
                } else {
                    Authority::Elsewhere
                };
            }
        }
        Authority::Elsewhere
    }

    /// Answers one question.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        let soa = match self.authority(name) {
            Authority::Elsewhere => return Lookup::Forward,
            Authority::Cluster => &self.soa,
            Authority::Reverse { v6: false } => &self.soa4,
            Authority::Reverse { v6: true } => &self.soa6,
        };
        if !self.synced {
            return Lookup::Answer(Answer::rcode(ResponseCode::ServFail));
        }
        let mut ans = Answer::rcode(ResponseCode::NoError);
        ans.authoritative = true;
        let Some(node) = self.names.get(name) else {
            ans.rcode = ResponseCode::NXDomain;
            ans.authority.push(soa);
            return Lookup::Answer(ans);
        };
        if *name == self.domain && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            ans.answers.push(&self.soa);
        }
        push_matching(&mut ans.answers, node, qtype);
        if ans.answers.is_empty() && qtype != RecordType::CNAME {
            // A CNAME stands for the name whatever the type: give it and follow it while the
            // target is ours.
            let mut cur = node;
            for _ in 0..MAX_CNAME_CHAIN {
                let Some(cname) = cur
                    .records
                    .iter()
                    .find(|(_, r)| r.record_type() == RecordType::CNAME)
                else {
                    break;
                };
                ans.answers.push(&cname.1);
                let RData::CNAME(target) = &cname.1.data else {
                    break;
                };
                let target = LowerName::new(&target.0);
                match self.names.get(&target) {
                    Some(next) if self.domain.zone_of(&target) => {
                        push_matching(&mut ans.answers, next, qtype);
                        cur = next;
                    }
                    _ => break,
                }
            }
        }
        if ans.answers.is_empty() {
            ans.authority.push(soa);
            return Lookup::Answer(ans);
        }
        self.additional(&mut ans);
        Lookup::Answer(ans)
    }

    /// Addresses of SRV targets and of the NS, when we hold them.
    fn additional<'a>(&'a self, ans: &mut Answer<'a>) {
        for r in &ans.answers {
            let target = match &r.data {
                RData::SRV(srv) => &srv.target,
                RData::NS(ns) => &ns.0,
                _ => continue,
            };
            if let Some(node) = self.names.get(&LowerName::new(target)) {
                for (_, rec) in &node.records {
                    if matches!(rec.record_type(), RecordType::A | RecordType::AAAA)
                        && !ans.additional.contains(&rec)
                    {
                        ans.additional.push(rec);
                    }
                }
            }
        }
    }
}

fn push_matching<'a>(out: &mut Vec<&'a Record>, node: &'a Node, qtype: RecordType) {
    for (_, r) in &node.records {
        if qtype == RecordType::ANY || r.record_type() == qtype {
            out.push(r);
        }
    }
}

/// The address a full reverse name stands for (`4.3.2.1.in-addr.arpa.` or 32 nibbles under
/// `ip6.arpa.`).
pub fn reverse_addr(name: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let text = |l: &[u8]| std::str::from_utf8(l).ok().map(str::to_ascii_lowercase);
    match labels.len() {
        6 if text(labels[4])? == "in-addr" && text(labels[5])? == "arpa" => {
            let mut o = [0u8; 4];
            for (i, l) in labels[..4].iter().enumerate() {
                let s = text(l)?;
                if s.len() > 1 && s.starts_with('0') {
                    return None;
                }
                o[3 - i] = s.parse().ok()?;
            }
            Some(IpAddr::from(o))
        }
        34 if text(labels[32])? == "ip6" && text(labels[33])? == "arpa" => {
            let mut bytes = [0u8; 16];
            for (i, l) in labels[..32].iter().enumerate() {
                if l.len() != 1 {
                    return None;
                }
                let nib = (l[0] as char).to_digit(16)? as u8;
                let pos = 31 - i;
                bytes[pos / 2] |= if pos % 2 == 0 { nib << 4 } else { nib };
            }
            Some(IpAddr::from(bytes))
        }
        _ => None,
    }
}
