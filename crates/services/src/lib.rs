//! Services in one place (design.md §6), cilium's `pkg/loadbalancer` in shape: the plan types
//! and the incremental compiler (Services + EndpointSlices -> the elements of a node's
//! `inet flatnet` maps), their nftables rendering, LoadBalancer address allocation and
//! announcement, kube-proxy's health servers, the kernel adapter, its fake and the proxy loop.
//!
//! # Layout
//! - [`plan`]: pure: the plan types, [`compile`], [`Compiler`] (incremental, proven equal to a
//!   from-scratch compile), the diff as element operations, the rendered table;
//!   [`plan::health`]: what the health servers answer.
//! - [`lb`]: pure: which LoadBalancer address each Service shows, and its status.
//! - [`proxy`]: the loop ([`proxy::run`]): list + watch, compile, apply; the
//!   [`ProxyDataplane`] seam; [`Applier`].
//! - `fake`: [`MemNft`], the table in memory.
//! - [`health_server`]: the health servers' sockets, in the node's namespace.
//! - `kernel` (feature `kernel`): [`NetnsProxy`], the only code here that touches the kernel.
//!
//! This crate must not know about routes or NetworkPolicy, nor build netlink messages itself
//! (that is `datapath`'s job).

mod fake;
pub mod health_server;
#[cfg(feature = "kernel")]
mod kernel;
pub mod lb;
pub mod plan;
pub mod proxy;

pub use fake::MemNft;
pub use health_server::{HealthConfig, ProxyHealth};
#[cfg(feature = "kernel")]
pub use kernel::{NetnsProxy, OpenError};
pub use plan::*;
pub use proxy::{Applier, KernelError, ProxyConfig, ProxyDataplane, ProxyReport};
