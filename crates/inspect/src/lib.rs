//! Diagnostics: what the cluster does with a packet and whether it has caught up with the
//! store, answered from the store with the same compilers the agents run (the features' pure
//! halves: `routes`, `services`, `netpol`), plus real probes from inside pod namespaces.
//!
//! # Layout
//! - [`trace`]: `flatnet trace`: the entry node's service proxy decision (`services`), the
//!   route hop that node's compiled routes give (`routes::compile`, longest prefix match), and
//!   the NetworkPolicy verdict (`netpol`) per endpoint; and how that prints.
//! - [`connectivity`]: `flatnet connectivity`: which pods take part, real probes from inside
//!   their network namespaces, the same matrix from the compiled policy, and how both print.
//! - [`converge`]: what is not converged yet (`flatnet wait --converged`, `flatnet status`),
//!   reading the agents' typed status (`store::contract::AgentStatus`).
//! - [`status`]: `flatnet status`: leases, agents and problems, as a table or JSON.
//!
//! It reads the store and the cluster's namespaces, never writes either: it must not change
//! kernel state (probes only open sockets inside pod namespaces), not write store keys, and not
//! carry its own copy of a decision a feature's compiler makes. `lab` must not depend on it.

#![warn(missing_docs)]

pub mod connectivity;
pub mod converge;
pub mod status;
pub mod trace;
