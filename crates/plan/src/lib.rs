//! Pure compilers from cluster state to what a node's dataplane must hold.
//!
//! # Layout
//! - [`services`]: Services + EndpointSlices -> the elements of the service proxy's nftables
//!   maps (and the few fixed chains they point at), plus the diff between two such plans.
//! - [`policy`]: Namespaces + Pods + NetworkPolicies -> per-pod rules, and an evaluator that
//!   says whether a flow is allowed and which rule decided.
//!
//! This crate does no IO: no kernel, no store, no files. The agent feeds it values and
//! applies what it returns through `datapath`.

pub mod policy;
pub mod services;
