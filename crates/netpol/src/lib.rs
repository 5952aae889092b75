//! NetworkPolicy (`networking.k8s.io/v1`, upstream semantics) in one place: the compiler and
//! evaluator (what `flatnet policy explain` and `connectivity` ask), the nftables rendering of
//! one node's share, the kernel adapter, its fake and the enforcement loop.
//!
//! [`Cluster`] holds namespaces, pods and policies; [`Cluster::compile`] turns them into a
//! [`CompiledPolicy`]: per pod and direction, whether the pod is isolated and which traffic
//! the union of the selecting policies allows, as rules over deduplicated *peer sets* (pod
//! addresses from selectors, `ipBlock` ranges) and resolved port ranges. That is the shape the
//! agent enforces with nftables sets, and what [`CompiledPolicy::verdict`] and
//! [`CompiledPolicy::matrix`] evaluate, so what we explain is what we enforce.
//!
//! Semantics worth knowing (all as upstream unless said):
//! - A pod is isolated for a direction iff a policy of its namespace selects it and has that
//!   policy type; `policyTypes` defaults to `Ingress`, plus `Egress` when the policy has at
//!   least one egress rule ([`model::NetworkPolicySpec::policy_types`]).
//! - A flow is allowed iff the source's egress and the destination's ingress both allow it;
//!   a side that is not a pod (an IP outside the cluster) does not restrict.
//! - Named ports resolve against the *destination* pod, by name and protocol, in both
//!   directions; a destination without that port (or outside the cluster) matches nothing.
//! - `ipBlock` matches addresses, pod addresses included.
//! - A pod reaching its own address is always allowed ([`DirectionVerdict::Loopback`]): the
//!   packet never leaves the pod's network namespace, so no dataplane filters it (upstream's
//!   e2e suite ignores that case, `ignoreLoopback`).
//! - `hostNetwork` pods are not policy subjects: they are never isolated and never selected
//!   by a pod selector; as traffic endpoints they count as their (node) address.
//! - Only IPv4 is evaluated; IPv6 `ipBlock`s match nothing.
//!
//! # Layout
//! - `input` — [`PodInfo`], [`NamespaceInfo`], [`Flow`] and the checked internal form of a
//!   policy (errors name the policy, the field and the value).
//! - `ipblock` — `cidr` minus `except` as disjoint prefixes.
//! - `compile` — [`Cluster`] -> [`CompiledPolicy`].
//! - `eval` — [`CompiledPolicy::verdict`], [`CompiledPolicy::matrix`], [`Verdict::explain`].
//! - `cases` (feature `cases`) — the upstream e2e case files as data, for the static and the
//!   lab replays.
//! - [`nft`] — one node's share of a [`CompiledPolicy`] as the sets of `inet flatnet-policy`
//!   ([`nft::compile_node`]), their diff, and the table's fixed rules.
//! - [`run`] — the enforcement loop: list + watch, compile, apply ([`run::run`]), and the
//!   [`PolicyDataplane`] seam.
//! - `fake` — [`MemPolicy`], the table in memory.
//! - `kernel` (feature `kernel`) — [`NetnsPolicy`], the only code here that touches the kernel.
//!
//! Everything but `run` and `kernel` is a pure function of its inputs: a change (a new policy,
//! a label, a deleted pod) is a recompile of the current state. This crate must not know about
//! routes or services, nor build netlink messages itself (that is `datapath`'s job).

#[cfg(feature = "cases")]
pub mod cases;
mod compile;
mod eval;
mod fake;
mod input;
mod ipblock;
#[cfg(feature = "kernel")]
mod kernel;
pub mod nft;
pub mod run;

#[cfg(test)]
mod tests;

pub use compile::{
    AllowEntry, Cluster, CompiledPolicy, CompiledRule, DestPort, DirectionRules, NamedPortRef,
    NamedSetId, PeerRef, PeerSet, PeerSetId, PodId, PortRange, PortRef,
};
pub use eval::{DirectionVerdict, Verdict};
pub use fake::MemPolicy;
pub use input::{Endpoint, Flow, NamedPort, NamespaceInfo, PodInfo, PodRef, Protocol};
#[cfg(feature = "kernel")]
pub use kernel::NetnsPolicy;
pub use nft::{AllowRange, PolicyOp, PolicyPlan, compile_node, diff};
pub use run::{Applier, KernelError, PolicyDataplane, PolicyReport};

/// Why a cluster state could not be compiled or a question not answered.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum PolicyError {
    /// A NetworkPolicy the API server would have rejected.
    #[error("NetworkPolicy {policy}: {field}: invalid value {value}: {reason}")]
    InvalidPolicy {
        /// `namespace/name`.
        policy: String,
        /// Path of the offending field, e.g. `spec.ingress[0].ports[1].port`.
        field: String,
        /// The value found, quoted.
        value: String,
        /// What the API server requires.
        reason: String,
    },
    /// A pod whose address or ports cannot be read.
    #[error("pod {pod}: {field}: invalid value {value}: {reason}")]
    InvalidPod {
        /// `namespace/name`.
        pod: String,
        /// Path of the offending field, e.g. `status.podIP`.
        field: String,
        /// The value found, quoted.
        value: String,
        /// What the field must hold.
        reason: String,
    },
    /// A stored object that does not read as its kind's typed view.
    #[error("{object}: {reason}")]
    InvalidObject {
        /// `Kind namespace/name`.
        object: String,
        /// The decoding error.
        reason: String,
    },
    /// The same pod given twice.
    #[error("pod {0} is given twice")]
    DuplicatePod(String),
    /// A pod the question names is not in the cluster.
    #[error("pod {0} not found")]
    UnknownPod(String),
    /// A pod reference that is not `namespace/name`.
    #[error("invalid pod reference {0:?}: expected namespace/name")]
    BadPodRef(String),
    /// A protocol other than TCP, UDP and SCTP.
    #[error("unsupported protocol {0:?}: supported values: \"TCP\", \"UDP\", \"SCTP\"")]
    Protocol(String),
}

impl From<model::UnknownProtocol> for PolicyError {
    fn from(e: model::UnknownProtocol) -> Self {
        PolicyError::Protocol(e.0)
    }
}
