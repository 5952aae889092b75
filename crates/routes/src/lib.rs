//! Pod routing between nodes (design.md §5), flannel's `pkg/subnet` + `pkg/backend` in one
//! place: lease the node's pod subnet from the store, write the node's CNI conflist, and keep
//! the node's inter-node routes (host-gw) or VXLAN device, routes, neighbours and FDB entries
//! (vxlan) in line with every other node's lease — compile, diff, apply.
//!
//! # Layout
//! - [`plan`]: pure [`compile`] (leases -> [`NodePlan`]) and [`diff`] (plans -> [`Change`]s).
//! - [`lease`]: acquire, renew and re-claim the subnet lease (the subnet manager).
//! - [`conflist`]: the CNI conflist, atomic file writes.
//! - [`dataplane`]: the [`Dataplane`] seam and [`MemRoutes`], its in-memory fake.
//! - `kernel` (feature `kernel`): [`NetnsRoutes`], the only code here that touches the kernel
//!   (via `datapath`).
//! - [`run`]: the loop ([`Routes`]): lease, list + watch `subnets/`, renew, reconcile, report.
//!
//! Restarts are hitless: every route installed carries [`plan::ROUTE_PROTOCOL`], so a restarted
//! agent reads back what it owns and applies only the difference; nothing is flushed, not on
//! start, not on shutdown, not while the store is unreachable.
//!
//! This crate must not program anything outside the node namespace it is given, nor build
//! netlink messages itself (that is `datapath`'s job), nor know about services or policy.

pub mod conflist;
pub mod dataplane;
#[cfg(feature = "kernel")]
mod kernel;
pub mod lease;
pub mod plan;
pub mod run;

pub use dataplane::{Dataplane, DataplaneError, MemRoutes};
#[cfg(feature = "kernel")]
pub use kernel::NetnsRoutes;
pub use lease::LeaseError;
pub use plan::{Change, NodePlan, UnderlayInfo, compile, diff};
pub use run::{Routes, RoutesConfig, RoutesError, Shared};
