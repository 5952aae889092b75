//! [`Cluster`] -> [`CompiledPolicy`].
//!
//! Work is done once per policy and once per *class* of pods, never per pair of pods:
//! - each policy's target pods are matched once, against the pods of its namespace only;
//! - each distinct peer (namespace selector x pod selector, or ipBlock) is resolved once into
//!   a [`PeerSet`], and identical sets are shared ([`PeerSetId`]);
//! - pods selected by the same policies (and, when a rule names ports, declaring the same
//!   named ports) share one [`DirectionRules`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::{Kind, LabelSelector, NetworkPolicy, Object};
use serde::Serialize;

use super::PolicyError;
use super::input::{
    NAMESPACE_NAME_LABEL, NamedPort, NamespaceInfo, NsSelect, Peer, PodInfo, Policy, PortValue,
    Protocol, Rule, check_policy,
};
use super::ipblock::{self, IpBlockSet};

/// Index of a pod in [`CompiledPolicy::pods`].
pub type PodId = usize;

/// Index of a deduplicated peer set in [`CompiledPolicy::peer_sets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PeerSetId(pub usize);

/// Index of a deduplicated set of destination ports in [`CompiledPolicy::named_sets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NamedSetId(pub usize);

/// A set of peers: the pods some selectors picked (matched by identity, enforced by their
/// addresses) and the address ranges of `ipBlock`s (which match pod addresses too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct PeerSet {
    /// Sorted, no duplicates.
    pub pods: Vec<PodId>,
    /// Sorted, disjoint prefixes.
    pub blocks: Vec<Ipv4Net>,
}

impl PeerSet {
    /// Whether the set holds `ip` through its blocks.
    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        ipblock::contains(&self.blocks, ip)
    }

    /// Whether the set holds pod `id` (with address `ip`): selected, or inside a block.
    pub fn contains_pod(&self, id: PodId, ip: Option<Ipv4Addr>) -> bool {
        self.pods.binary_search(&id).is_ok() || ip.is_some_and(|ip| self.contains_ip(ip))
    }
}

/// A range of ports of one protocol; `0..=65535` is "every port".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    /// Protocol the ports are of.
    pub protocol: Protocol,
    /// First port, inclusive.
    pub start: u16,
    /// Last port, inclusive (`endPort`, or `start` for a single port).
    pub end: u16,
}

impl PortRange {
    /// Whether `port` of `protocol` is in the range.
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.start..=self.end).contains(&port)
    }

    /// Whether the range is every port of its protocol (a rule with only `protocol:`).
    pub fn is_all_ports(&self) -> bool {
        self.start == 0 && self.end == u16::MAX
    }
}

/// A resolved port of a rule, with its index in the rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortRef {
    /// Index in the rule's `ports`.
    pub index: usize,
    /// The ports it stands for.
    pub range: PortRange,
}

/// A peer of a rule, with its index in the rule's `from`/`to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PeerRef {
    /// Index in the rule's `from`/`to`.
    pub index: usize,
    /// The peers it selects.
    pub set: PeerSetId,
}

/// A named port of an egress rule (resolved per destination, see [`CompiledRule::named_set`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NamedPortRef {
    /// Index in the rule's `ports`.
    pub index: usize,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The port name, looked up in each destination pod's named container ports.
    pub name: String,
}

/// A destination pod and port that an egress named port resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DestPort {
    /// The destination pod.
    pub pod: PodId,
    /// Protocol of the named port.
    pub protocol: Protocol,
    /// The number the name resolved to on that pod.
    pub port: u16,
}

/// One rule of one policy as it applies to one pod, with the policy and rule it came from.
///
/// It allows a remote end iff the remote is in one of `peers` (or `peers` is `None`) and the
/// port is in `ports` (or `ports` is `None`); for egress also iff the (destination, port)
/// is in `named_set`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompiledRule {
    /// Index in [`CompiledPolicy::policies`].
    pub policy: usize,
    /// Index in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// `None`: every peer.
    pub peers: Option<Vec<PeerRef>>,
    /// `None`: every port. For ingress, named ports are already resolved against the pod;
    /// for egress this holds the numeric ports only.
    pub ports: Option<Vec<PortRef>>,
    /// Egress: the rule's named ports.
    pub named: Vec<NamedPortRef>,
    /// Egress: the destinations among `peers` that have one of `named`, with the port.
    pub named_set: Option<NamedSetId>,
}

/// What the dataplane enforces for one pod and direction: the union of the selecting
/// policies' rules, merged so that there is one entry per distinct port set (each with one
/// peer set), whatever the number of policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllowEntry {
    /// `None`: every peer.
    pub peers: Option<PeerSetId>,
    /// `None`: every port. Sorted, no duplicates, never empty.
    pub ports: Option<Vec<PortRange>>,
}

/// One pod's policy for one direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DirectionRules {
    /// Whether some policy selects the pod for this direction (else everything is allowed).
    pub isolated: bool,
    /// The selecting policies (indices in [`CompiledPolicy::policies`]), in name order.
    pub policies: Vec<usize>,
    /// Every rule of the selecting policies, in policy then rule order (for explanations).
    pub rules: Vec<CompiledRule>,
    /// The same rules merged for enforcement.
    pub allow: Vec<AllowEntry>,
    /// Egress: (destination, port) sets from named ports, allowed whatever `allow` says.
    pub named: Vec<NamedSetId>,
}

/// The cluster state the compiler reads.
#[derive(Clone, Debug)]
pub struct Cluster {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Policy subjects, sorted by namespace then name.
    pods: Vec<PodInfo>,
    host_pods: Vec<PodInfo>,
    /// Sorted by `namespace/name`.
    policies: Vec<Policy>,
}

impl Cluster {
    /// Checks the policies (an invalid one is an error naming it, the field and the value)
    /// and indexes pods by namespace. A namespace that is not listed but has pods gets only
    /// the `kubernetes.io/metadata.name` label; listed namespaces get that label too.
    pub fn new(
        namespaces: Vec<NamespaceInfo>,
        pods: Vec<PodInfo>,
        policies: Vec<NetworkPolicy>,
    ) -> Result<Cluster, PolicyError> {
        let mut ns_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for ns in namespaces {
            let mut labels = ns.labels;
            labels
                .entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| ns.name.clone());
            ns_labels.insert(ns.name, labels);
        }
        let (host_pods, mut pods): (Vec<PodInfo>, Vec<PodInfo>) =
            pods.into_iter().partition(|p| p.host_network);
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for w in pods.windows(2) {
            if w[0].namespace == w[1].namespace && w[0].name == w[1].name {
                return Err(PolicyError::DuplicatePod(w[0].key()));
            }
        }
        for p in &pods {
            ns_labels.entry(p.namespace.clone()).or_insert_with(|| {
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), p.namespace.clone())])
            });
        }
        let mut checked = policies
            .iter()
            .map(check_policy)
            .collect::<Result<Vec<_>, _>>()?;
        checked.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Cluster {
            namespaces: ns_labels,
            pods,
            host_pods,
            policies: checked,
        })
    }

    /// Reads Namespaces, Pods and NetworkPolicies out of stored objects (other kinds are
    /// skipped), as the agent and the CLI get them from the store.
    pub fn from_objects(objects: &[Object]) -> Result<Cluster, PolicyError> {
        let mut namespaces = Vec::new();
        let mut pods = Vec::new();
        let mut policies = Vec::new();
        let type_err = |o: &Object, e: model::ModelError| PolicyError::InvalidObject {
            object: format!("{} {}", o.kind, o.display_name()),
            reason: e.to_string(),
        };
        for o in objects {
            match o.kind {
                Kind::Namespace => {
                    let ns: model::Namespace = o.typed().map_err(|e| type_err(o, e))?;
                    namespaces.push(NamespaceInfo::from_namespace(&ns));
                }
                Kind::Pod => {
                    let pod: model::Pod = o.typed().map_err(|e| type_err(o, e))?;
                    pods.push(PodInfo::from_pod(&pod)?);
                }
                Kind::NetworkPolicy => {
                    policies.push(o.typed::<NetworkPolicy>().map_err(|e| type_err(o, e))?);
                }
                _ => {}
            }
        }
        Cluster::new(namespaces, pods, policies)
    }

    /// Compiles the current state. Deterministic: the same state gives the same result.
    pub fn compile(&self) -> CompiledPolicy {
        Builder::new(self).build()
    }

    /// Pod ids of namespace `ns` (pods are sorted by namespace).
    fn pods_in(&self, ns: &str) -> std::ops::Range<PodId> {
        let start = self.pods.partition_point(|p| p.namespace.as_str() < ns);
        let end = self.pods.partition_point(|p| p.namespace.as_str() <= ns);
        start..end
    }
}

/// Per-pod, per-direction rules over deduplicated peer sets, plus what the evaluator needs
/// to look pods up.
#[derive(Clone, Debug, Serialize)]
pub struct CompiledPolicy {
    pods: Vec<PodInfo>,
    #[serde(skip)]
    host_pods: Vec<PodInfo>,
    policies: Vec<String>,
    peer_sets: Vec<PeerSet>,
    named_sets: Vec<Vec<DestPort>>,
    /// Shared [`DirectionRules`]; index 0 is "not isolated".
    classes: Vec<DirectionRules>,
    pub(super) ingress: Vec<usize>,
    pub(super) egress: Vec<usize>,
    #[serde(skip)]
    by_name: HashMap<(String, String), PodId>,
    #[serde(skip)]
    by_ip: HashMap<Ipv4Addr, PodId>,
}

impl CompiledPolicy {
    /// The policy subjects, sorted by namespace then name; a [`PodId`] indexes this.
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }

    /// `namespace/name` of each policy, sorted; [`CompiledRule::policy`] indexes this.
    pub fn policies(&self) -> &[String] {
        &self.policies
    }

    /// Every distinct peer set; the agent makes one nftables set per entry that a local
    /// pod's rules use.
    pub fn peer_sets(&self) -> &[PeerSet] {
        &self.peer_sets
    }

    /// The peer set `id` stands for.
    pub fn peer_set(&self, id: PeerSetId) -> &PeerSet {
        &self.peer_sets[id.0]
    }

    /// Every distinct set of (destination pod, protocol, port) from egress named ports.
    pub fn named_sets(&self) -> &[Vec<DestPort>] {
        &self.named_sets
    }

    /// The (destination pod, protocol, port) entries `id` stands for.
    pub fn named_set(&self, id: NamedSetId) -> &[DestPort] {
        &self.named_sets[id.0]
    }

    /// The shared [`DirectionRules`] that [`Self::ingress`] and [`Self::egress`] index.
    pub(super) fn class(&self, i: usize) -> &DirectionRules {
        &self.classes[i]
    }

    /// The ingress policy of pod `id`.
    pub fn ingress(&self, id: PodId) -> &DirectionRules {
        &self.classes[self.ingress[id]]
    }

    /// The egress policy of pod `id`.
    pub fn egress(&self, id: PodId) -> &DirectionRules {
        &self.classes[self.egress[id]]
    }

    /// The id of a policy subject.
    pub fn pod_id(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.by_name
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// The policy subject that has address `ip`.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<PodId> {
        self.by_ip.get(&ip).copied()
    }

    /// A `hostNetwork` pod (not a policy subject) by name.
    pub(crate) fn host_pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.host_pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The addresses of a peer set, as the elements of an nftables interval set: every
    /// selected pod's address as a /32, and the blocks, aggregated. Pods without an address
    /// contribute nothing (they cannot send or receive yet).
    pub fn peer_set_addresses(&self, id: PeerSetId) -> Vec<Ipv4Net> {
        let set = self.peer_set(id);
        let mut nets: Vec<Ipv4Net> = set
            .pods
            .iter()
            .filter_map(|&p| self.pods[p].ip)
            .map(Ipv4Net::from)
            .collect();
        nets.extend_from_slice(&set.blocks);
        Ipv4Net::aggregate(&nets)
    }
}

/// Everything one policy rule needs, computed once.
#[derive(Clone, Debug)]
struct Prepared {
    peers: Option<Vec<PeerRef>>,
    /// Numeric ports; `None` when the rule has no `ports` at all.
    ports: Option<Vec<PortRef>>,
    named: Vec<NamedPortRef>,
    /// Egress only.
    named_set: Option<NamedSetId>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Dir {
    Ingress,
    Egress,
}

#[derive(PartialEq, Eq, Hash)]
struct ClassKey {
    dir: Dir,
    policies: Vec<usize>,
    /// The pod's named ports, when an ingress rule of these policies names ports.
    ports: Option<Vec<NamedPort>>,
}

struct Builder<'a> {
    c: &'a Cluster,
    peer_sets: Vec<PeerSet>,
    peer_index: HashMap<PeerSet, PeerSetId>,
    selector_cache: HashMap<String, PeerSetId>,
    union_cache: HashMap<Vec<PeerSetId>, PeerSetId>,
    named_sets: Vec<Vec<DestPort>>,
    named_index: HashMap<Vec<DestPort>, NamedSetId>,
    classes: Vec<DirectionRules>,
    class_index: HashMap<ClassKey, usize>,
    /// (label key, value) -> the pods carrying it, ascending: a selector with `matchLabels`
    /// checks only the pods that carry its rarest label, not every pod of the namespace.
    labels: HashMap<(&'a str, &'a str), Vec<PodId>>,
}

impl<'a> Builder<'a> {
    fn new(c: &'a Cluster) -> Builder<'a> {
        let mut labels: HashMap<(&'a str, &'a str), Vec<PodId>> = HashMap::new();
        for (id, p) in c.pods.iter().enumerate() {
            for (k, v) in &p.labels {
                labels.entry((k.as_str(), v.as_str())).or_default().push(id);
            }
        }
        Builder {
            labels,
            c,
            peer_sets: Vec::new(),
            peer_index: HashMap::new(),
            selector_cache: HashMap::new(),
            union_cache: HashMap::new(),
            named_sets: Vec::new(),
            named_index: HashMap::new(),
            classes: vec![DirectionRules::default()],
            class_index: HashMap::new(),
        }
    }

    fn build(mut self) -> CompiledPolicy {
        let c = self.c;
        let n = c.pods.len();
        let mut sel_in: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut sel_eg: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut prepared: Vec<(Vec<Prepared>, Vec<Prepared>)> =
            Vec::with_capacity(c.policies.len());
        for (pi, p) in c.policies.iter().enumerate() {
            let mut any = false;
            for id in self.matching(c.pods_in(&p.namespace), &p.selector) {
                any = true;
                if p.ingress.is_some() {
                    sel_in[id].push(pi);
                }
                if p.egress.is_some() {
                    sel_eg[id].push(pi);
                }
            }
            let prep = |b: &mut Self, rules: &Option<Vec<Rule>>, dir: Dir| match rules {
                Some(rules) if any => rules.iter().map(|r| b.prepare(p, r, dir)).collect(),
                _ => Vec::new(),
            };
            let ing = prep(&mut self, &p.ingress, Dir::Ingress);
            let eg = prep(&mut self, &p.egress, Dir::Egress);
            prepared.push((ing, eg));
        }
        let mut ingress = vec![0; n];
        let mut egress = vec![0; n];
        for id in 0..n {
            ingress[id] = self.class(Dir::Ingress, &sel_in[id], id, &prepared);
            egress[id] = self.class(Dir::Egress, &sel_eg[id], id, &prepared);
        }
        let by_name = c
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.namespace.clone(), p.name.clone()), i))
            .collect();
        let mut by_ip = HashMap::new();
        for (i, p) in c.pods.iter().enumerate() {
            if let Some(ip) = p.ip {
                by_ip.entry(ip).or_insert(i);
            }
        }
        CompiledPolicy {
            pods: c.pods.clone(),
            host_pods: c.host_pods.clone(),
            policies: c.policies.iter().map(|p| p.key.clone()).collect(),
            peer_sets: self.peer_sets,
            named_sets: self.named_sets,
            classes: self.classes,
            ingress,
            egress,
            by_name,
            by_ip,
        }
    }

    /// The pods of `range` (one namespace) that `sel` matches, ascending.
    fn matching(&self, range: std::ops::Range<PodId>, sel: &LabelSelector) -> Vec<PodId> {
        let pods = &self.c.pods;
        let rarest = sel
            .match_labels
            .iter()
            .map(|(k, v)| {
                self.labels
                    .get(&(k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|ids| ids.len());
        match rarest {
            Some(ids) => {
                let from = ids.partition_point(|&id| id < range.start);
                let to = ids.partition_point(|&id| id < range.end);
                ids[from..to]
                    .iter()
                    .copied()
                    .filter(|&id| sel.matches(&pods[id].labels))
                    .collect()
            }
            None => range.filter(|&id| sel.matches(&pods[id].labels)).collect(),
        }
    }

    fn intern_peers(&mut self, set: PeerSet) -> PeerSetId {
        if let Some(&id) = self.peer_index.get(&set) {
            return id;
        }
        let id = PeerSetId(self.peer_sets.len());
        self.peer_sets.push(set.clone());
        self.peer_index.insert(set, id);
        id
    }

    /// The pods a selector peer picks: pods matching `pods` in the namespaces `namespaces`
    /// picks (the policy's own namespace when there is no namespace selector).
    fn selector_peer(&mut self, own_ns: &str, ns: &NsSelect, pods: &LabelSelector) -> PeerSetId {
        let key = match ns {
            NsSelect::Own => format!("own {own_ns:?} {pods:?}"),
            NsSelect::Matching(sel) => format!("ns {sel:?} {pods:?}"),
        };
        if let Some(&id) = self.selector_cache.get(&key) {
            return id;
        }
        let c = self.c;
        let mut members = Vec::new();
        let mut add_ns = |ns: &str| {
            members.extend(self.matching(c.pods_in(ns), pods));
        };
        match ns {
            NsSelect::Own => add_ns(own_ns),
            NsSelect::Matching(sel) => {
                for (name, labels) in &c.namespaces {
                    if sel.matches(labels) {
                        add_ns(name);
                    }
                }
            }
        }
        members.sort_unstable();
        let id = self.intern_peers(PeerSet {
            pods: members,
            blocks: Vec::new(),
        });
        self.selector_cache.insert(key, id);
        id
    }

    fn prepare(&mut self, p: &Policy, r: &Rule, dir: Dir) -> Prepared {
        let peers = r.peers.as_ref().map(|peers| {
            peers
                .iter()
                .enumerate()
                .map(|(index, peer)| {
                    let set = match peer {
                        Peer::Pods { namespaces, pods } => {
                            self.selector_peer(&p.namespace, namespaces, pods)
                        }
                        Peer::Block(block) => self.intern_peers(PeerSet {
                            pods: Vec::new(),
                            blocks: block.prefixes().to_vec(),
                        }),
                    };
                    PeerRef { index, set }
                })
                .collect::<Vec<_>>()
        });
        let mut named = Vec::new();
        let ports = r.ports.as_ref().map(|ports| {
            let mut numeric = Vec::new();
            for (index, spec) in ports.iter().enumerate() {
                let (start, end) = match &spec.port {
                    PortValue::All => (0, u16::MAX),
                    PortValue::Range(s, e) => (*s, *e),
                    PortValue::Named(name) => {
                        named.push(NamedPortRef {
                            index,
                            protocol: spec.protocol,
                            name: name.clone(),
                        });
                        continue;
                    }
                };
                numeric.push(PortRef {
                    index,
                    range: PortRange {
                        protocol: spec.protocol,
                        start,
                        end,
                    },
                });
            }
            numeric
        });
        let named_set = if dir == Dir::Egress && !named.is_empty() {
            self.named_destinations(peers.as_deref(), &named)
        } else {
            None
        };
        Prepared {
            peers,
            ports,
            named,
            named_set,
        }
    }

    /// Egress named ports resolved against every destination pod the rule's peers reach.
    fn named_destinations(
        &mut self,
        peers: Option<&[PeerRef]>,
        named: &[NamedPortRef],
    ) -> Option<NamedSetId> {
        let pods = &self.c.pods;
        let reached = |id: PodId| match peers {
            None => true,
            Some(peers) => peers
                .iter()
                .any(|pr| self.peer_sets[pr.set.0].contains_pod(id, pods[id].ip)),
        };
        let mut dests = Vec::new();
        for (id, pod) in pods.iter().enumerate() {
            if !reached(id) {
                continue;
            }
            for n in named {
                if let Some(port) = pod.named_port(&n.name, n.protocol) {
                    dests.push(DestPort {
                        pod: id,
                        protocol: n.protocol,
                        port,
                    });
                }
            }
        }
        if dests.is_empty() {
            return None;
        }
        dests.sort_unstable();
        dests.dedup();
        if let Some(&id) = self.named_index.get(&dests) {
            return Some(id);
        }
        let id = NamedSetId(self.named_sets.len());
        self.named_sets.push(dests.clone());
        self.named_index.insert(dests, id);
        Some(id)
    }

    /// The shared rules of pod `pod` selected by `policies` in direction `dir`.
    fn class(
        &mut self,
        dir: Dir,
        policies: &[usize],
        pod: PodId,
        prepared: &[(Vec<Prepared>, Vec<Prepared>)],
    ) -> usize {
        if policies.is_empty() {
            return 0;
        }
        let rules_of = |pi: usize| match dir {
            Dir::Ingress => &prepared[pi].0,
            Dir::Egress => &prepared[pi].1,
        };
        let needs_ports = dir == Dir::Ingress
            && policies
                .iter()
                .any(|&pi| rules_of(pi).iter().any(|r| !r.named.is_empty()));
        let key = ClassKey {
            dir,
            policies: policies.to_vec(),
            ports: needs_ports.then(|| self.c.pods[pod].ports.clone()),
        };
        if let Some(&i) = self.class_index.get(&key) {
            return i;
        }
        let mut rules = Vec::new();
        for &pi in policies {
            for (ri, r) in rules_of(pi).iter().enumerate() {
                let mut ports = r.ports.clone();
                let mut named = r.named.clone();
                if dir == Dir::Ingress && !named.is_empty() {
                    let list = ports.get_or_insert_with(Vec::new);
                    for n in named.drain(..) {
                        if let Some(port) = self.c.pods[pod].named_port(&n.name, n.protocol) {
                            list.push(PortRef {
                                index: n.index,
                                range: PortRange {
                                    protocol: n.protocol,
                                    start: port,
                                    end: port,
                                },
                            });
                        }
                    }
                    list.sort_by_key(|p| p.index);
                }
                rules.push(CompiledRule {
                    policy: pi,
                    rule: ri,
                    peers: r.peers.clone(),
                    ports,
                    named,
                    named_set: r.named_set,
                });
            }
        }
        let (allow, named) = self.merge(&rules);
        let i = self.classes.len();
        self.classes.push(DirectionRules {
            isolated: true,
            policies: policies.to_vec(),
            rules,
            allow,
            named,
        });
        self.class_index.insert(key, i);
        i
    }

    /// Merges rules into one entry per distinct port set, each with the union of the peers.
    fn merge(&mut self, rules: &[CompiledRule]) -> (Vec<AllowEntry>, Vec<NamedSetId>) {
        // ports (None = all) -> peers (None = all)
        let mut groups: BTreeMap<Option<Vec<PortRange>>, Option<Vec<PeerSetId>>> = BTreeMap::new();
        let mut named = Vec::new();
        for r in rules {
            named.extend(r.named_set);
            let ports = match &r.ports {
                None => None,
                Some(list) if list.is_empty() => continue,
                Some(list) => {
                    let mut ranges: Vec<PortRange> = list.iter().map(|p| p.range).collect();
                    ranges.sort_unstable();
                    ranges.dedup();
                    Some(ranges)
                }
            };
            let entry = groups.entry(ports).or_insert_with(|| Some(Vec::new()));
            match (&r.peers, entry.as_mut()) {
                (None, _) => *entry = None,
                (Some(peers), Some(sets)) => sets.extend(peers.iter().map(|p| p.set)),
                (Some(_), None) => {}
            }
        }
        named.sort_unstable();
        named.dedup();
        let allow = groups
            .into_iter()
            .map(|(ports, peers)| AllowEntry {
                peers: peers.map(|sets| self.union(sets)),
                ports,
            })
            .collect();
        (allow, named)
    }

    fn union(&mut self, mut sets: Vec<PeerSetId>) -> PeerSetId {
        sets.sort_unstable();
        sets.dedup();
        if let [one] = sets[..] {
            return one;
        }
        if let Some(&id) = self.union_cache.get(&sets) {
            return id;
        }
        let mut pods = Vec::new();
        let mut blocks = Vec::new();
        for s in &sets {
            let set = &self.peer_sets[s.0];
            pods.extend_from_slice(&set.pods);
            blocks.extend_from_slice(&set.blocks);
        }
        pods.sort_unstable();
        pods.dedup();
        let blocks = IpBlockSet::from_prefixes(blocks).prefixes().to_vec();
        let id = self.intern_peers(PeerSet { pods, blocks });
        self.union_cache.insert(sets, id);
        id
    }
}
