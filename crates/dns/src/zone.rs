//! The indexed zone (pure): a hash map from each lowercase name to its records, kept up to
//! date one owner (a Service with its slices, a Pod, a Namespace) at a time, and the lookup
//! that turns a question into an answer.
//!
//! Name existence is decided by the map alone: every name that holds a record, and every
//! ancestor of one up to the zone apex (the empty non-terminals such as `svc.<zone>` or
//! `_tcp.<svc>.<ns>.svc.<zone>`), has an entry whose `refs` counts the contributions at or
//! below it. A missing entry is NXDOMAIN; an entry without records of the asked type is
//! NODATA. Both cost one hash lookup, whatever the zone's size.
//!
//! The map is keyed by the name's lowercase wire form (length-prefixed labels and the root's
//! 0), so a question can be looked up from the bytes of a query without building a hickory
//! name ([`Zone::negative`]); the zone's SOA is kept encoded for the same reason
//! ([`EncodedSoa`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};

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
    Reverse {
        /// `ip6.arpa` rather than `in-addr.arpa`.
        v6: bool,
    },
    /// Somewhere else: forward it.
    Elsewhere,
}

/// What to send back for one question.
#[derive(Debug, PartialEq)]
pub struct Answer<'a> {
    /// The response code (`NOERROR`, `NXDOMAIN`, `SERVFAIL` before the first sync, ...).
    pub rcode: ResponseCode,
    /// The AA flag: set for answers from the zone.
    pub authoritative: bool,
    /// The answer section: the records asked for, CNAMEs followed first.
    pub answers: Vec<&'a Record>,
    /// The SOA of the zone for negative answers.
    pub authority: Vec<&'a Record>,
    /// The additional section: addresses of SRV and NS targets the zone holds.
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
    /// Answer from the zone.
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
    /// Keyed by [`wire_key`].
    names: FxMap<Box<[u8]>, Node>,
    /// The cluster domain's [`wire_key`].
    domain_wire: Box<[u8]>,
    /// `soa` encoded, for [`Zone::negative`].
    soa_wire: EncodedSoa,
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
        let soa = cfg.soa(1);
        let mut zone = Self {
            domain_wire: wire_key(&domain),
            soa_wire: EncodedSoa::new(&soa),
            in_addr: LowerName::new(&Name::from_ascii("in-addr.arpa.").unwrap_or_default()),
            ip6: LowerName::new(&Name::from_ascii("ip6.arpa.").unwrap_or_default()),
            soa,
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

    /// What the zone was made with.
    pub fn config(&self) -> &ZoneConfig {
        &self.cfg
    }

    /// Marks the zone as loaded from the store: from now on it answers from its records.
    pub fn set_synced(&mut self) {
        self.synced = true;
    }

    /// Whether [`Zone::set_synced`] was called (before that, names of the zone get SERVFAIL).
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
        self.soa_wire = EncodedSoa::new(&self.soa);
    }

    /// The names from `name` up to the apex of its zone (or just `name` outside them), as
    /// [`wire_key`]s.
    fn lineage(&self, name: &LowerName) -> Vec<Box<[u8]>> {
        let mut out = vec![wire_key(name)];
        let mut cur = name.clone();
        let inside =
            self.domain.zone_of(&cur) || self.in_addr.zone_of(&cur) || self.ip6.zone_of(&cur);
        if !inside {
            return out;
        }
        while cur != self.domain && cur != self.in_addr && cur != self.ip6 && cur.num_labels() > 1 {
            cur = cur.base_name();
            out.push(wire_key(&cur));
        }
        out
    }

    fn add(&mut self, id: u64, rr: &Rr) {
        for n in self.lineage(&rr.name) {
            self.names.entry(n).or_default().refs += 1;
        }
        if let Some(r) = &rr.record
            && let Some(node) = self.names.get_mut(&*wire_key(&rr.name))
        {
            node.records.push((id, r.clone()));
        }
    }

    fn withdraw(&mut self, c: &Contribution) {
        for rr in &c.rrs {
            if let Some(node) = self.names.get_mut(&*wire_key(&rr.name)) {
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
                    || self.names.contains_key(&*wire_key(name));
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
        let Some(node) = self.names.get(&*wire_key(name)) else {
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
                match self.names.get(&*wire_key(&target)) {
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
            if let Some(node) = self.names.get(&*wire_key(target)) {
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

/// A negative answer found from a question's wire form ([`Zone::negative`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negative<'a> {
    /// NXDOMAIN (true) or NODATA (false).
    pub nxdomain: bool,
    /// The zone's SOA, for the authority section.
    pub soa: &'a EncodedSoa,
}

impl Zone {
    /// The answer to a question for `qname` (its lowercase wire form, the root's 0 included)
    /// and `qtype` of class IN, when it is negative (NXDOMAIN or NODATA) and inside the cluster
    /// domain: what [`Zone::lookup`] answers then, without building a hickory name. `None`
    /// for every other case, which the caller answers with [`Zone::lookup`]: names outside
    /// the cluster domain (reverse and forwarded names), an unsynced zone, and any name whose
    /// answer has records (an exact type match, a CNAME, the apex SOA).
    pub fn negative(&self, qname: &[u8], qtype: RecordType) -> Option<Negative<'_>> {
        if !self.synced || !self.in_domain(qname) {
            return None;
        }
        let Some(node) = self.names.get(qname) else {
            return Some(Negative {
                nxdomain: true,
                soa: &self.soa_wire,
            });
        };
        let positive = match qtype {
            RecordType::ANY => !node.records.is_empty() || *qname == *self.domain_wire,
            RecordType::SOA if *qname == *self.domain_wire => true,
            _ => node.records.iter().any(|(_, r)| {
                let t = r.record_type();
                t == qtype || t == RecordType::CNAME
            }),
        };
        (!positive).then_some(Negative {
            nxdomain: false,
            soa: &self.soa_wire,
        })
    }

    /// Whether the wire name `qname` (well formed: labels, then 0) is the cluster domain or
    /// below it. The bytes must match and the suffix must start at a label.
    fn in_domain(&self, qname: &[u8]) -> bool {
        let d = &self.domain_wire;
        let Some(start) = qname.len().checked_sub(d.len()) else {
            return false;
        };
        if qname[start..] != **d {
            return false;
        }
        let mut i = 0;
        while i < start {
            i += 1 + usize::from(qname[i]);
        }
        i == start
    }
}

/// The lowercase wire form of `name` (each label's length and bytes, then the root's 0):
/// the key of the zone's index.
pub fn wire_key(name: &Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out.into_boxed_slice()
}

/// A record encoded once by hickory at offset 0, ready to be copied to any offset of a
/// message: the compression pointers inside it (into itself) are moved by the offset.
/// Byte for byte what hickory's encoder writes for the record there when no earlier name of
/// the message is a suffix of its names (true of the SOA after a question: hickory stores the
/// question only as a whole, type and class included, so no name points into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSoa {
    bytes: Vec<u8>,
    /// Where the two-byte compression pointers are.
    pointers: Vec<usize>,
}

impl EncodedSoa {
    fn new(soa: &Record) -> Self {
        let mut bytes = Vec::with_capacity(64);
        let mut enc = BinEncoder::new(&mut bytes);
        if let Err(e) = soa.emit(&mut enc) {
            // Cannot happen for names that parsed; the short path is then off.
            tracing::warn!(error = %e, "cannot encode the zone's SOA");
            bytes.clear();
        }
        let pointers = soa_pointers(&bytes).unwrap_or_else(|| {
            bytes.clear();
            Vec::new()
        });
        Self { bytes, pointers }
    }

    /// Whether there is nothing to write (the SOA could not be encoded).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends the record to `out`, whose length is its offset in the message. False (and
    /// `out` unchanged) when there is nothing to write or the pointers would not fit.
    pub fn append_to(&self, out: &mut Vec<u8>) -> bool {
        let base = out.len();
        if self.bytes.is_empty() || base + self.bytes.len() > 0x3fff {
            return false;
        }
        out.extend_from_slice(&self.bytes);
        for &p in &self.pointers {
            let target =
                usize::from(u16::from_be_bytes([out[base + p], out[base + p + 1]]) & 0x3fff);
            let moved = 0xc000 | (target + base) as u16;
            out[base + p..base + p + 2].copy_from_slice(&moved.to_be_bytes());
        }
        true
    }
}

/// The positions of the compression pointers in an encoded SOA record (owner, type, class,
/// TTL, length, MNAME, RNAME, five numbers); `None` when it is not that shape.
fn soa_pointers(b: &[u8]) -> Option<Vec<usize>> {
    let mut ptrs = Vec::new();
    let name_end = |mut i: usize, ptrs: &mut Vec<usize>| -> Option<usize> {
        loop {
            let len = *b.get(i)?;
            match len {
                0 => return Some(i + 1),
                1..=63 => i += 1 + usize::from(len),
                0xc0..=0xff => {
                    b.get(i + 1)?;
                    ptrs.push(i);
                    return Some(i + 2);
                }
                _ => return None,
            }
        }
    };
    let i = name_end(0, &mut ptrs)?;
    let rdlen = usize::from(u16::from_be_bytes([*b.get(i + 8)?, *b.get(i + 9)?]));
    let rdata = i + 10;
    let i = name_end(rdata, &mut ptrs)?;
    let i = name_end(i, &mut ptrs)?;
    (i + 20 == b.len() && rdata + rdlen == b.len()).then_some(ptrs)
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
