//! Questions to a [`CompiledPolicy`]: one flow ([`CompiledPolicy::verdict`], with the rule
//! that decided) or a whole connectivity matrix ([`CompiledPolicy::matrix`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::PolicyError;
use super::compile::{CompiledPolicy, DirectionRules, PeerSet, PeerSetId, PodId};
use super::input::{Endpoint, Flow, PodRef, Protocol};

/// The answer for one flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Egress of the source and ingress of the destination both allow it.
    pub allowed: bool,
    /// The source as given (`ns/pod`, or an address with the pod it belongs to).
    pub src: String,
    /// The destination as given, like `src`.
    pub dst: String,
    /// Destination port.
    pub port: u16,
    /// IP protocol.
    pub protocol: Protocol,
    /// The source pod's egress.
    pub egress: DirectionVerdict,
    /// The destination pod's ingress.
    pub ingress: DirectionVerdict,
}

/// What one direction's policy says about a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum DirectionVerdict {
    /// No policy selects the pod for this direction: everything is allowed.
    NotIsolated,
    /// Allowed by this rule: `rule` indexes the policy's `ingress`/`egress` list, `peer` its
    /// `from`/`to` (`None`: the rule has no peers, so every peer), `port` its `ports`
    /// (`None`: every port).
    #[serde(rename_all = "camelCase")]
    Allowed {
        /// `namespace/name`.
        policy: String,
        /// Index in the policy's `ingress`/`egress` rules.
        rule: usize,
        /// Index in the rule's `from`/`to`; `None` when the rule has no peers.
        peer: Option<usize>,
        /// Index in the rule's `ports`; `None` when the rule has no ports.
        port: Option<usize>,
    },
    /// The pod is isolated by `selecting` (`namespace/name`) and none of their rules allow.
    Denied {
        /// The policies that select the pod for this direction, as `namespace/name`.
        selecting: Vec<String>,
    },
    /// This end is not a policy subject (an address outside the cluster, a hostNetwork pod).
    NotApplicable,
    /// The flow is from a pod to itself: it never leaves the pod, no policy applies.
    Loopback,
}

impl DirectionVerdict {
    fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied { .. })
    }
}

impl Verdict {
    /// The verdict in plain words, one line for the answer and one per direction.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "{} -> {} {}/{}: {}\n",
            self.src,
            self.dst,
            self.protocol,
            self.port,
            if self.allowed { "allowed" } else { "denied" }
        );
        for (label, who, v) in [
            ("egress from", &self.src, &self.egress),
            ("ingress to", &self.dst, &self.ingress),
        ] {
            let _ = write!(s, "  {label} {who}: ");
            let _ = match v {
                DirectionVerdict::NotIsolated => writeln!(
                    s,
                    "allowed: no NetworkPolicy selects {who} for {}",
                    label.split(' ').next().unwrap_or(label)
                ),
                DirectionVerdict::Allowed {
                    policy,
                    rule,
                    peer,
                    port,
                } => {
                    let dir = label.split(' ').next().unwrap_or(label);
                    let peer = match peer {
                        Some(i) => format!(
                            "peer {i} of its {}",
                            if dir == "egress" { "`to`" } else { "`from`" }
                        ),
                        None => "any peer".to_string(),
                    };
                    let port = match port {
                        Some(i) => format!("entry {i} of its `ports`"),
                        None => "any port".to_string(),
                    };
                    writeln!(
                        s,
                        "allowed by NetworkPolicy {policy}, {dir} rule {rule} ({peer}, {port})"
                    )
                }
                DirectionVerdict::Denied { selecting } => writeln!(
                    s,
                    "denied: isolated by NetworkPolicy {} and no rule of {} allows this peer \
                     and port",
                    selecting.join(", "),
                    if selecting.len() == 1 { "it" } else { "them" }
                ),
                DirectionVerdict::NotApplicable => {
                    writeln!(s, "not restricted: not a pod that NetworkPolicy applies to")
                }
                DirectionVerdict::Loopback => writeln!(
                    s,
                    "allowed: a pod reaching its own address never leaves its network \
                     namespace, NetworkPolicy does not apply"
                ),
            };
        }
        s
    }
}

/// One end of a flow, resolved.
#[derive(Clone, Copy, Debug)]
struct Remote {
    /// The policy subject, if it is one.
    pod: Option<PodId>,
    ip: Option<Ipv4Addr>,
}

impl Remote {
    fn in_set(&self, set: &PeerSet) -> bool {
        self.pod
            .is_some_and(|id| set.pods.binary_search(&id).is_ok())
            || self.ip.is_some_and(|ip| set.contains_ip(ip))
    }
}

impl CompiledPolicy {
    fn resolve(&self, e: &Endpoint) -> Result<(Remote, String), PolicyError> {
        match e {
            Endpoint::Pod(r) => {
                if let Some(id) = self.pod_id(&r.namespace, &r.name) {
                    let ip = self.pods()[id].ip;
                    return Ok((Remote { pod: Some(id), ip }, r.to_string()));
                }
                match self.host_pod(&r.namespace, &r.name) {
                    Some(p) => Ok((
                        Remote {
                            pod: None,
                            ip: p.ip,
                        },
                        format!("{r} (host network)"),
                    )),
                    None => Err(PolicyError::UnknownPod(r.to_string())),
                }
            }
            Endpoint::Ip(ip) => match self.pod_by_ip(*ip) {
                Some(id) => Ok((
                    Remote {
                        pod: Some(id),
                        ip: Some(*ip),
                    },
                    format!("{ip} ({})", self.pods()[id].key()),
                )),
                None => Ok((
                    Remote {
                        pod: None,
                        ip: Some(*ip),
                    },
                    ip.to_string(),
                )),
            },
        }
    }

    /// Whether `flow` is allowed, and by which rules (or which policies deny it).
    ///
    /// Errors only for a pod that is not in the cluster.
    pub fn verdict(&self, flow: &Flow) -> Result<Verdict, PolicyError> {
        let (src, src_name) = self.resolve(&flow.src)?;
        let (dst, dst_name) = self.resolve(&flow.dst)?;
        let (egress, ingress) = match (src.pod, dst.pod) {
            (Some(s), Some(d)) if s == d => {
                (DirectionVerdict::Loopback, DirectionVerdict::Loopback)
            }
            _ => (
                match src.pod {
                    Some(s) => self.direction(self.egress(s), dst, dst.pod, flow),
                    None => DirectionVerdict::NotApplicable,
                },
                match dst.pod {
                    Some(d) => self.direction(self.ingress(d), src, None, flow),
                    None => DirectionVerdict::NotApplicable,
                },
            ),
        };
        Ok(Verdict {
            allowed: egress.allows() && ingress.allows(),
            src: src_name,
            dst: dst_name,
            port: flow.port,
            protocol: flow.protocol,
            egress,
            ingress,
        })
    }

    /// One direction: `remote` is the other end; `named_dst` is the destination pod against
    /// which egress named ports resolve (ingress ones are resolved at compile time).
    fn direction(
        &self,
        dir: &DirectionRules,
        remote: Remote,
        named_dst: Option<PodId>,
        flow: &Flow,
    ) -> DirectionVerdict {
        if !dir.isolated {
            return DirectionVerdict::NotIsolated;
        }
        for r in &dir.rules {
            let numeric = match &r.ports {
                None => Some(None),
                Some(list) => list
                    .iter()
                    .find(|p| p.range.matches(flow.protocol, flow.port))
                    .map(|p| Some(p.index)),
            };
            let port = numeric.or_else(|| {
                let dst = &self.pods()[named_dst?];
                r.named
                    .iter()
                    .find(|n| {
                        n.protocol == flow.protocol
                            && dst.named_port(&n.name, n.protocol) == Some(flow.port)
                    })
                    .map(|n| Some(n.index))
            });
            let Some(port) = port else { continue };
            let peer = match &r.peers {
                None => Some(None),
                Some(list) => list
                    .iter()
                    .find(|p| remote.in_set(self.peer_set(p.set)))
                    .map(|p| Some(p.index)),
            };
            let Some(peer) = peer else { continue };
            return DirectionVerdict::Allowed {
                policy: self.policies()[r.policy].clone(),
                rule: r.rule,
                peer,
                port,
            };
        }
        DirectionVerdict::Denied {
            selecting: dir
                .policies
                .iter()
                .map(|&p| self.policies()[p].clone())
                .collect(),
        }
    }

    /// The connectivity matrix among `pods` on one port: `[i][j]` is 1 when `pods[i]` may
    /// open a connection to `pods[j]`, else 0 (the diagonal is always 1, see
    /// [`DirectionVerdict::Loopback`]). Agrees with [`Self::verdict`] for every pair, but
    /// works from the merged rules with one bitset per peer set, so a 1,000-pod matrix costs
    /// milliseconds.
    pub fn matrix(
        &self,
        pods: &[PodRef],
        port: u16,
        protocol: Protocol,
    ) -> Result<Vec<Vec<u8>>, PolicyError> {
        let ends = pods
            .iter()
            .map(|r| Ok(self.resolve(&Endpoint::Pod(r.clone()))?.0))
            .collect::<Result<Vec<Remote>, PolicyError>>()?;
        let n = ends.len();
        let mut positions: HashMap<PodId, Vec<usize>> = HashMap::new();
        for (k, e) in ends.iter().enumerate() {
            if let Some(id) = e.pod {
                positions.entry(id).or_default().push(k);
            }
        }
        let mut m = MatrixBuilder {
            cp: self,
            ends: &ends,
            positions: &positions,
            port,
            protocol,
            sets: HashMap::new(),
        };
        // Pods share rule classes: one bitset per class and direction.
        let mut ingress_cache: HashMap<usize, Option<BitSet>> = HashMap::new();
        let mut egress_cache: HashMap<usize, Option<BitSet>> = HashMap::new();
        for id in ends.iter().filter_map(|e| e.pod) {
            let ci = self.ingress[id];
            ingress_cache
                .entry(ci)
                .or_insert_with(|| m.allowed(self.class(ci), false));
            let ce = self.egress[id];
            egress_cache
                .entry(ce)
                .or_insert_with(|| m.allowed(self.class(ce), true));
        }
        let ingress_ok: Vec<Option<&BitSet>> = ends
            .iter()
            .map(|e| lookup(&ingress_cache, e.pod.map(|id| self.ingress[id])))
            .collect();
        let egress_ok: Vec<Option<&BitSet>> = ends
            .iter()
            .map(|e| lookup(&egress_cache, e.pod.map(|id| self.egress[id])))
            .collect();
        let mut out = vec![vec![0u8; n]; n];
        for (i, row) in out.iter_mut().enumerate() {
            for (j, cell) in row.iter_mut().enumerate() {
                let same = ends[i].pod.is_some() && ends[i].pod == ends[j].pod;
                let eg = egress_ok[i].is_none_or(|b| b.get(j));
                let ig = ingress_ok[j].is_none_or(|b| b.get(i));
                *cell = u8::from(same || (eg && ig));
            }
        }
        Ok(out)
    }
}

/// The bitset of a rule class, `None` for "every end" (or not a policy subject).
fn lookup(cache: &HashMap<usize, Option<BitSet>>, class: Option<usize>) -> Option<&BitSet> {
    class.and_then(|c| cache.get(&c)).and_then(Option::as_ref)
}

struct MatrixBuilder<'a> {
    cp: &'a CompiledPolicy,
    ends: &'a [Remote],
    positions: &'a HashMap<PodId, Vec<usize>>,
    port: u16,
    protocol: Protocol,
    sets: HashMap<PeerSetId, BitSet>,
}

impl MatrixBuilder<'_> {
    /// Which of `ends` one pod's direction allows (`None`: all of them).
    fn allowed(&mut self, dir: &DirectionRules, egress: bool) -> Option<BitSet> {
        if !dir.isolated {
            return None;
        }
        let mut bits = BitSet::new(self.ends.len());
        for e in &dir.allow {
            let port_ok = e
                .ports
                .as_ref()
                .is_none_or(|ranges| ranges.iter().any(|r| r.matches(self.protocol, self.port)));
            if !port_ok {
                continue;
            }
            // a rule without peers allows every end
            let set = e.peers?;
            let cp = self.cp;
            let ends = self.ends;
            let members = self.sets.entry(set).or_insert_with(|| {
                let s = cp.peer_set(set);
                let mut b = BitSet::new(ends.len());
                for (k, end) in ends.iter().enumerate() {
                    if end.in_set(s) {
                        b.set(k);
                    }
                }
                b
            });
            bits.or(members);
        }
        if egress {
            for &id in &dir.named {
                for d in self.cp.named_set(id) {
                    if d.protocol == self.protocol && d.port == self.port {
                        for &k in self.positions.get(&d.pod).map_or(&[][..], Vec::as_slice) {
                            bits.set(k);
                        }
                    }
                }
            }
        }
        Some(bits)
    }
}

#[derive(Clone, Debug)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> BitSet {
        BitSet(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn or(&mut self, other: &BitSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}
