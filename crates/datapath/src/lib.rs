//! The only crate that changes kernel state: network namespaces, rtnetlink (links, addresses,
//! routes, neighbours) and sysctls inside a namespace.
//!
//! # Layout
//! - `netns`: open a namespace, run code with the calling thread inside it.
//! - `netlink`: a small synchronous rtnetlink socket (no async runtime: the CNI plugin is a
//!   short-lived process and must start fast).
//! - `sysctl`: read and write `/proc/sys` of the calling thread's namespace.
//! - `nft`: nftables set and map elements as one nfnetlink transaction, and `nft -f` for
//!   structure.
//! - `tools`: `conntrack` and `nft -j list chains`, run inside a namespace.
//!
//! This crate must not decide anything: callers tell it exactly what to create or remove.

pub mod netlink;
pub mod netns;
pub mod nft;
pub mod sysctl;
pub mod tools;

pub use netlink::{Handle, Link, NetlinkError};
pub use netns::{NetNs, NetnsError, remount_sys};
