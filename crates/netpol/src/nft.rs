//! Pure: a [`CompiledPolicy`] -> the contents of this node's `inet flatnet-policy` table
//! ([`PolicyPlan`]), the difference between two plans ([`diff`]) and the table as `nft` text.
//!
//! Layout of the table (fixed; only set elements change):
//!
//! ```text
//! set ingress-isolated  { type ipv4_addr }        local pods some policy isolates for ingress
//! set egress-isolated   { type ipv4_addr }        ... for egress
//! set ingress-allow     { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval }
//!                         pod . peer range . protocol range . port range, for every allowed
//!                         (peer, protocol, port) of every local pod isolated for ingress
//! set egress-allow      { same type }             pod . destination range . protocol . port
//! chain forward { hook forward; ct state established,related accept;
//!                 ip saddr @egress-isolated jump egress; ip daddr @ingress-isolated jump ingress }
//! chain input   { hook input;   ct state established,related accept;
//!                 ip saddr @egress-isolated jump egress }
//! chain ingress { ip daddr . ip saddr . meta l4proto . th dport @ingress-allow return; drop }
//! chain egress  { ip saddr . ip daddr . meta l4proto . th dport @egress-allow return; drop }
//! ```
//!
//! A new connection costs two hash lookups and at most two lookups in the interval sets,
//! whatever the number of pods, policies or rules: the union of all rules is in the sets'
//! elements, never in the number of rules a packet walks through. Elements of one interval
//! set never overlap (the kernel refuses some overlaps and silently mis-handles none, but only
//! disjoint elements are safe to add and delete one by one): each pod's allowed space is cut
//! into disjoint protocol/port boxes, each with a disjoint list of peer ranges.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use crate::{CompiledPolicy, DirectionRules, Protocol};

/// The table this module fills (the service proxy owns `inet flatnet`).
pub const TABLE: &str = "flatnet-policy";

/// Set names.
pub mod sets {
    /// Addresses of local pods isolated for ingress.
    pub const INGRESS_ISOLATED: &str = "ingress-isolated";
    /// Addresses of local pods isolated for egress.
    pub const EGRESS_ISOLATED: &str = "egress-isolated";
    /// What isolated local pods accept: pod . source range . protocol . destination port.
    pub const INGRESS_ALLOW: &str = "ingress-allow";
    /// What isolated local pods may reach: pod . destination range . protocol . destination port.
    pub const EGRESS_ALLOW: &str = "egress-allow";
    /// Every set of the table, in the order [`super::render_table`] prints them.
    pub const ALL: [&str; 4] = [
        INGRESS_ISOLATED,
        EGRESS_ISOLATED,
        INGRESS_ALLOW,
        EGRESS_ALLOW,
    ];
}

/// One element of an allow set: a local pod, and a range of remote addresses, protocols and
/// destination ports (both ends included) it may talk to in that set's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowRange {
    /// The local pod's address (destination for ingress, source for egress).
    pub pod: Ipv4Addr,
    /// The remote end's addresses, first to last.
    pub peer: (Ipv4Addr, Ipv4Addr),
    /// IP protocol numbers, first to last (6 TCP, 17 UDP, 132 SCTP).
    pub proto: (u8, u8),
    /// Destination ports, first to last.
    pub port: (u16, u16),
}

impl AllowRange {
    /// Whether the two ranges share a point (same pod and intersecting in every field).
    pub fn overlaps(&self, o: &AllowRange) -> bool {
        fn meet<T: Ord>(a: &(T, T), b: &(T, T)) -> bool {
            a.0 <= b.1 && b.0 <= a.1
        }
        self.pod == o.pod
            && meet(&self.peer, &o.peer)
            && meet(&self.proto, &o.proto)
            && meet(&self.port, &o.port)
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        132 => "sctp".to_string(),
        p => p.to_string(),
    }
}

impl fmt::Display for AllowRange {
    /// As `nft` reads it: `10.244.1.5 . 10.0.0.0-10.255.255.255 . tcp . 80-90`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} . ", self.pod)?;
        match self.peer {
            (a, b) if a == b => write!(f, "{a}")?,
            (a, b) => write!(f, "{a}-{b}")?,
        }
        match self.proto {
            (a, b) if a == b => write!(f, " . {}", proto_name(a))?,
            (a, b) => write!(f, " . {a}-{b}")?,
        }
        match self.port {
            (a, b) if a == b => write!(f, " . {a}"),
            (a, b) => write!(f, " . {a}-{b}"),
        }
    }
}

/// What this node's policy table holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Elements of set `ingress-isolated`.
    pub ingress_isolated: BTreeSet<Ipv4Addr>,
    /// Elements of set `egress-isolated`.
    pub egress_isolated: BTreeSet<Ipv4Addr>,
    /// Elements of set `ingress-allow`; disjoint.
    pub ingress_allow: BTreeSet<AllowRange>,
    /// Elements of set `egress-allow`; disjoint.
    pub egress_allow: BTreeSet<AllowRange>,
    /// Pods of this node with an address (policy subjects; hostNetwork pods are not).
    pub local_pods: usize,
}

impl PolicyPlan {
    /// Elements in all four sets.
    pub fn elements(&self) -> usize {
        self.ingress_isolated.len()
            + self.egress_isolated.len()
            + self.ingress_allow.len()
            + self.egress_allow.len()
    }

    /// Every element as an addition (a full load).
    pub fn all_ops(&self) -> Vec<PolicyOp> {
        diff(&PolicyPlan::default(), self)
    }
}

/// One element change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    /// Add a pod address to an isolation set.
    AddAddr {
        /// [`sets::INGRESS_ISOLATED`] or [`sets::EGRESS_ISOLATED`].
        set: &'static str,
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// Remove a pod address from an isolation set.
    DelAddr {
        /// [`sets::INGRESS_ISOLATED`] or [`sets::EGRESS_ISOLATED`].
        set: &'static str,
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// Add an element to an allow set.
    AddRange {
        /// [`sets::INGRESS_ALLOW`] or [`sets::EGRESS_ALLOW`].
        set: &'static str,
        /// The element.
        range: AllowRange,
    },
    /// Delete an element from an allow set.
    DelRange {
        /// [`sets::INGRESS_ALLOW`] or [`sets::EGRESS_ALLOW`].
        set: &'static str,
        /// The element.
        range: AllowRange,
    },
}

impl PolicyOp {
    /// The name of the set the element is in.
    pub fn set(&self) -> &'static str {
        match self {
            PolicyOp::AddAddr { set, .. }
            | PolicyOp::DelAddr { set, .. }
            | PolicyOp::AddRange { set, .. }
            | PolicyOp::DelRange { set, .. } => set,
        }
    }

    /// The element as `nft` prints it.
    pub fn element(&self) -> String {
        match self {
            PolicyOp::AddAddr { ip, .. } | PolicyOp::DelAddr { ip, .. } => ip.to_string(),
            PolicyOp::AddRange { range, .. } | PolicyOp::DelRange { range, .. } => {
                range.to_string()
            }
        }
    }

    /// Whether this adds an element (else it deletes one).
    pub fn is_add(&self) -> bool {
        matches!(self, PolicyOp::AddAddr { .. } | PolicyOp::AddRange { .. })
    }
}

/// The element changes that turn `old` into `new`: every deletion before any addition (so an
/// element being replaced never overlaps its successor inside the transaction).
pub fn diff(old: &PolicyPlan, new: &PolicyPlan) -> Vec<PolicyOp> {
    let mut dels = Vec::new();
    let mut adds = Vec::new();
    let addr_sets = [
        (
            sets::INGRESS_ISOLATED,
            &old.ingress_isolated,
            &new.ingress_isolated,
        ),
        (
            sets::EGRESS_ISOLATED,
            &old.egress_isolated,
            &new.egress_isolated,
        ),
    ];
    for (set, o, n) in addr_sets {
        dels.extend(o.difference(n).map(|&ip| PolicyOp::DelAddr { set, ip }));
        adds.extend(n.difference(o).map(|&ip| PolicyOp::AddAddr { set, ip }));
    }
    let range_sets = [
        (sets::INGRESS_ALLOW, &old.ingress_allow, &new.ingress_allow),
        (sets::EGRESS_ALLOW, &old.egress_allow, &new.egress_allow),
    ];
    for (set, o, n) in range_sets {
        dels.extend(
            o.difference(n)
                .map(|&range| PolicyOp::DelRange { set, range }),
        );
        adds.extend(
            n.difference(o)
                .map(|&range| PolicyOp::AddRange { set, range }),
        );
    }
    dels.extend(adds);
    dels
}

/// One element's worth of a direction's allowed space (without the pod): a peer range, a
/// protocol range and a port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cell {
    peer: (u32, u32),
    proto: (u8, u8),
    port: (u16, u16),
}

/// The protocol and port of a packet as one number, `protocol << 16 | port`, so that "any
/// port of any protocol" and "ports 80-90 of TCP" are both one interval of one axis.
const SPACE_END: u32 = 0x00FF_FFFF;

fn proto_number(p: Protocol) -> u32 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Sorts and merges inclusive ranges (touching ones too).
fn merge(mut v: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// One allow entry: peers (`None`: every address) on some intervals of the protocol/port axis.
#[derive(Debug)]
struct Entry {
    peers: Option<Vec<(u32, u32)>>,
    space: Vec<(u32, u32)>,
}

const ALL_PEERS: (u32, u32) = (0, u32::MAX);

/// Inclusive ranges of one axis, sorted and disjoint.
type Ranges = Vec<(u32, u32)>;

/// The allow entries of one direction, in axis terms. `egress`: include named-port
/// destinations.
fn entries(cp: &CompiledPolicy, rules: &DirectionRules, egress: bool) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for e in &rules.allow {
        let peers = e.peers.map(|id| {
            merge(
                cp.peer_set_addresses(id)
                    .iter()
                    .map(|n| (u32::from(n.network()), u32::from(n.broadcast())))
                    .collect(),
            )
        });
        if peers.as_ref().is_some_and(Vec::is_empty) {
            continue;
        }
        let space = match &e.ports {
            None => vec![(0, SPACE_END)],
            Some(ranges) => merge(
                ranges
                    .iter()
                    .map(|r| {
                        let p = proto_number(r.protocol) << 16;
                        (p | u32::from(r.start), p | u32::from(r.end))
                    })
                    .collect(),
            ),
        };
        entries.push(Entry { peers, space });
    }
    if egress {
        for &id in &rules.named {
            for d in cp.named_set(id) {
                let Some(ip) = cp.pods()[d.pod].ip else {
                    continue;
                };
                let ip = u32::from(ip);
                let at = proto_number(d.protocol) << 16 | u32::from(d.port);
                entries.push(Entry {
                    peers: Some(vec![(ip, ip)]),
                    space: vec![(at, at)],
                });
            }
        }
    }
    entries
}

/// The disjoint cells one direction's rules allow: the entries cut along whichever axis
/// gives fewer elements.
fn cells(cp: &CompiledPolicy, rules: &DirectionRules, egress: bool) -> Vec<Cell> {
    let entries = entries(cp, rules, egress);
    let by_port = cut_by_port(&entries);
    let by_peer = cut_by_peer(&entries);
    if by_peer.len() < by_port.len() {
        by_peer
    } else {
        by_port
    }
}

/// Cuts the protocol/port axis at every boundary; each piece gets the union of the peers of
/// the entries that cover it (neighbouring pieces with the same peers merged).
fn cut_by_port(entries: &[Entry]) -> Vec<Cell> {
    let mut cuts: Vec<u32> = entries
        .iter()
        .flat_map(|e| e.space.iter().flat_map(|&(s, end)| [s, end + 1]))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut cover: Vec<Vec<(u32, u32)>> = vec![Vec::new(); cuts.len().saturating_sub(1)];
    for e in entries {
        for &(s, end) in &e.space {
            let first = cuts.partition_point(|&c| c < s);
            let last = cuts.partition_point(|&c| c <= end);
            for slot in &mut cover[first..last.min(cuts.len() - 1)] {
                match &e.peers {
                    None => slot.push(ALL_PEERS),
                    Some(p) => slot.extend_from_slice(p),
                }
            }
        }
    }
    let mut runs: Vec<(u32, u32, Ranges)> = Vec::new();
    for (i, peers) in cover.into_iter().enumerate() {
        if peers.is_empty() {
            continue;
        }
        let peers = merge(peers);
        let (s, e) = (cuts[i], cuts[i + 1] - 1);
        match runs.last_mut() {
            Some(last) if last.1 + 1 == s && last.2 == peers => last.1 = e,
            _ => runs.push((s, e, peers)),
        }
    }
    let mut out = Vec::new();
    for (s, e, peers) in runs {
        for (proto, port) in boxes(s, e) {
            out.extend(peers.iter().map(|&peer| Cell { peer, proto, port }));
        }
    }
    out
}

/// Cuts the address axis at every boundary; each piece gets the union of the protocol/port
/// intervals of the entries that cover it (neighbouring pieces with the same ones merged).
fn cut_by_peer(entries: &[Entry]) -> Vec<Cell> {
    // (position, entry, +1 at a start / -1 past an end); positions as u64 (end + 1 of the
    // last address is 2^32).
    let mut events: Vec<(u64, i8, usize)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let peers = e
            .peers
            .as_deref()
            .unwrap_or(std::slice::from_ref(&ALL_PEERS));
        for &(a, b) in peers {
            events.push((u64::from(a), 1, i));
            events.push((u64::from(b) + 1, -1, i));
        }
    }
    events.sort_unstable();
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut runs: Vec<(u64, u64, Ranges)> = Vec::new();
    let mut space: Vec<(u32, u32)> = Vec::new();
    let mut k = 0;
    while k < events.len() {
        let pos = events[k].0;
        while k < events.len() && events[k].0 == pos {
            let (_, d, i) = events[k];
            if d > 0 {
                active.insert(i);
            } else {
                active.remove(&i);
            }
            k += 1;
        }
        space = merge(
            active
                .iter()
                .flat_map(|&i| entries[i].space.iter().copied())
                .collect(),
        );
        let Some(&(next, _, _)) = events.get(k) else {
            break;
        };
        if space.is_empty() {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == pos && last.2 == space => last.1 = next,
            _ => runs.push((pos, next, space.clone())),
        }
    }
    debug_assert!(space.is_empty(), "every range ends");
    let mut out = Vec::new();
    for (a, b, space) in runs {
        // Positions are below 2^32 + 1 and a run is never empty.
        let peer = (a as u32, (b - 1) as u32);
        for (s, e) in space {
            for (proto, port) in boxes(s, e) {
                out.push(Cell { peer, proto, port });
            }
        }
    }
    out
}

/// An interval of the protocol/port axis as at most three protocol x port boxes.
fn boxes(s: u32, e: u32) -> Vec<((u8, u8), (u16, u16))> {
    let (ps, ss) = ((s >> 16) as u8, (s & 0xFFFF) as u16);
    let (pe, se) = ((e >> 16) as u8, (e & 0xFFFF) as u16);
    if ps == pe {
        return vec![((ps, ps), (ss, se))];
    }
    let mut out = Vec::new();
    let mut full_from = ps;
    if ss != 0 {
        out.push(((ps, ps), (ss, u16::MAX)));
        full_from = ps + 1;
    }
    let mut tail = None;
    let mut full_to = pe;
    if se != u16::MAX {
        tail = Some(((pe, pe), (0, se)));
        full_to = pe - 1;
    }
    if full_from <= full_to {
        out.push(((full_from, full_to), (0, u16::MAX)));
    }
    out.extend(tail);
    out
}

/// What this node's table must hold: for each pod of `node` that has an address, whether it
/// is isolated per direction and, when it is, everything its policies allow.
pub fn compile_node(cp: &CompiledPolicy, node: &str) -> PolicyPlan {
    let mut plan = PolicyPlan::default();
    // Pods that share their rules (the compiler shares them between pods selected by the
    // same policies) share the work of cutting them into pieces.
    let mut cache: HashMap<(*const DirectionRules, bool), Vec<Cell>> = HashMap::new();
    for (id, pod) in cp.pods().iter().enumerate() {
        let Some(ip) = pod.ip else { continue };
        if pod.node.as_deref() != Some(node) {
            continue;
        }
        plan.local_pods += 1;
        for egress in [false, true] {
            let rules = if egress {
                cp.egress(id)
            } else {
                cp.ingress(id)
            };
            if !rules.isolated {
                continue;
            }
            let (isolated, allow) = if egress {
                (&mut plan.egress_isolated, &mut plan.egress_allow)
            } else {
                (&mut plan.ingress_isolated, &mut plan.ingress_allow)
            };
            isolated.insert(ip);
            let cells = cache
                .entry((std::ptr::from_ref(rules), egress))
                .or_insert_with(|| cells(cp, rules, egress));
            allow.extend(cells.iter().map(|c| AllowRange {
                pod: ip,
                peer: (Ipv4Addr::from(c.peer.0), Ipv4Addr::from(c.peer.1)),
                proto: c.proto,
                port: c.port,
            }));
        }
    }
    plan
}

/// The table's structure: the table, its four sets, its chains and their rules. Idempotent:
/// sets keep their elements, chains are flushed and refilled in the same transaction.
pub fn render_structure() -> String {
    let t = format!("inet {TABLE}");
    let mut s = String::new();
    let _ = writeln!(s, "add table {t} {{ comment \"flatnet network policy\"; }}");
    for set in [sets::INGRESS_ISOLATED, sets::EGRESS_ISOLATED] {
        let _ = writeln!(s, "add set {t} {set} {{ type ipv4_addr; }}");
    }
    for set in [sets::INGRESS_ALLOW, sets::EGRESS_ALLOW] {
        let _ = writeln!(
            s,
            "add set {t} {set} {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; }}"
        );
    }
    let mut chain = |name: &str, hook: Option<&str>, rules: &[String]| {
        nft_chain(&mut s, &t, name, hook, rules);
    };
    chain(
        "ingress",
        None,
        &[
            format!(
                "ip daddr . ip saddr . meta l4proto . th dport @{} return",
                sets::INGRESS_ALLOW
            ),
            // Also what a packet whose ports cannot be read (no transport header) gets.
            "drop".to_string(),
        ],
    );
    chain(
        "egress",
        None,
        &[
            format!(
                "ip saddr . ip daddr . meta l4proto . th dport @{} return",
                sets::EGRESS_ALLOW
            ),
            "drop".to_string(),
        ],
    );
    let established = "ct state established,related accept".to_string();
    let to_egress = format!("ip saddr @{} jump egress", sets::EGRESS_ISOLATED);
    let to_ingress = format!("ip daddr @{} jump ingress", sets::INGRESS_ISOLATED);
    // After the service proxy's DNAT (prerouting): pod to pod on this node and across nodes.
    chain(
        "forward",
        Some("type filter hook forward priority filter; policy accept;"),
        &[established.clone(), to_egress.clone(), to_ingress],
    );
    // Local pods to this node's own addresses: their egress applies. The node itself
    // reaching its pods (output) is always allowed, as upstream says and Calico does.
    chain(
        "input",
        Some("type filter hook input priority filter; policy accept;"),
        &[established, to_egress],
    );
    s
}

/// `nft` text for element changes (what the in-memory dataplane keeps, and what a person
/// would type).
pub fn render_ops(ops: &[PolicyOp]) -> String {
    let mut s = String::new();
    for op in ops {
        let verb = if op.is_add() { "add" } else { "delete" };
        let _ = writeln!(
            s,
            "{verb} element inet {TABLE} {} {{ {} }}",
            op.set(),
            op.element()
        );
    }
    s
}

/// The whole table as one `nft -f` script: structure, then every element (golden files).
pub fn render_table(plan: &PolicyPlan) -> String {
    let mut s = render_structure();
    s.push_str(&render_ops(&plan.all_ops()));
    s
}

/// Appends one chain of `table` (`"inet flatnet"`) as `nft -f` text: declared (with its hook,
/// for base chains), flushed and refilled, so running it again changes nothing.
pub(crate) fn nft_chain(
    s: &mut String,
    table: &str,
    name: &str,
    hook: Option<&str>,
    rules: &[String],
) {
    use std::fmt::Write as _;
    match hook {
        Some(h) => {
            let _ = writeln!(s, "add chain {table} {name} {{ {h} }}");
        }
        None => {
            let _ = writeln!(s, "add chain {table} {name}");
        }
    }
    let _ = writeln!(s, "flush chain {table} {name}");
    for r in rules {
        let _ = writeln!(s, "add rule {table} {name} {r}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boxes_split_an_axis_interval_at_protocol_edges() {
        let tcp = 6u32 << 16;
        assert_eq!(boxes(tcp | 80, tcp | 90), vec![((6, 6), (80, 90))]);
        assert_eq!(boxes(0, SPACE_END), vec![((0, 255), (0, 65535))]);
        assert_eq!(
            boxes(tcp | 81, (17 << 16) | 52),
            vec![
                ((6, 6), (81, 65535)),
                ((7, 16), (0, 65535)),
                ((17, 17), (0, 52))
            ]
        );
        assert_eq!(
            boxes(tcp | 81, 7 << 16 | 0xFFFF),
            vec![((6, 6), (81, 65535)), ((7, 7), (0, 65535))]
        );
    }

    fn covers(cells: &[Cell], addr: u32, proto: u8, port: u16) -> usize {
        cells
            .iter()
            .filter(|c| {
                (c.peer.0..=c.peer.1).contains(&addr)
                    && (c.proto.0..=c.proto.1).contains(&proto)
                    && (c.port.0..=c.port.1).contains(&port)
            })
            .count()
    }

    fn allowed(entries: &[Entry], addr: u32, proto: u8, port: u16) -> bool {
        let at = u32::from(proto) << 16 | u32::from(port);
        entries.iter().any(|e| {
            e.peers
                .as_ref()
                .is_none_or(|p| p.iter().any(|&(a, b)| (a..=b).contains(&addr)))
                && e.space.iter().any(|&(s, end)| (s..=end).contains(&at))
        })
    }

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        let range = |max: u32| (0..max, 0..8u32).prop_map(move |(a, w)| (a, (a + w).min(max)));
        let peers = prop::option::weighted(0.8, prop::collection::vec(range(60), 1..4));
        let space = prop_oneof![
            1 => Just(vec![(0, SPACE_END)]),
            4 => prop::collection::vec(
                (prop::sample::select(vec![6u32, 17, 132]), range(30)).prop_map(|(p, (a, b))| {
                    (p << 16 | a, p << 16 | b)
                }),
                1..3
            ),
        ];
        (peers, space).prop_map(|(peers, space)| Entry {
            peers: peers.map(merge),
            space: merge(space),
        })
    }

    proptest! {
        /// Both ways of cutting give disjoint cells that cover exactly what the entries allow.
        #[test]
        fn cuts_are_disjoint_and_cover_exactly_the_entries(
            entries in prop::collection::vec(entry_strategy(), 0..5)
        ) {
            for cells in [cut_by_port(&entries), cut_by_peer(&entries)] {
                for addr in [0u32, 1, 7, 8, 15, 30, 59, 60, 61, 1000, u32::MAX] {
                    for proto in [0u8, 6, 7, 17, 132, 255] {
                        for port in [0u16, 1, 5, 8, 29, 30, 31, 65535] {
                            let n = covers(&cells, addr, proto, port);
                            prop_assert!(n <= 1, "{n} cells hold {addr}/{proto}/{port}: {cells:?}");
                            prop_assert_eq!(
                                n == 1,
                                allowed(&entries, addr, proto, port),
                                "{}/{}/{} in {:?}", addr, proto, port, cells
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn merge_joins_touching_and_overlapping_ranges() {
        assert_eq!(
            merge(vec![(5, 9), (1, 2), (3, 4), (20, 30), (25, 26)]),
            vec![(1, 9), (20, 30)]
        );
        assert_eq!(merge(vec![(0, u32::MAX), (4, 5)]), vec![(0, u32::MAX)]);
    }
}
