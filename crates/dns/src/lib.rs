//! Cluster DNS (design.md §8): the Kubernetes DNS-based service discovery records for the
//! cluster domain, answered from our own hash index of the store's Services, EndpointSlices,
//! Pods and Namespaces, with hickory for the wire format and serving.
//!
//! hickory-server's in-memory authority scans every record of the zone to tell NXDOMAIN from
//! NODATA, which made 50 % NXDOMAIN load (what `ndots:5` search paths produce) fall from
//! ~55k to ~3k queries/s at 10,000 services. Here both are one hash lookup: every existing
//! name, including empty non-terminals, has an entry.
//!
//! # Layout
//! - `records` — store objects to records (pure): services, headless endpoints, SRV, PTR,
//!   ExternalName CNAMEs, pod records, namespaces, the fixed records
//! - `zone` — the index and the lookup (pure): NXDOMAIN vs NODATA, CNAME chasing, SOA in
//!   negative answers, SRV additionals, which names are ours and which are forwarded
//! - `server` — request in, response out (hickory), UDP worker threads, the TCP handler, the
//!   upstream forwarder
//! - `udp` — the UDP worker loop, batched with recvmmsg/sendmmsg
//! - `wire` — the short paths on raw queries (pure): plain queries, negative answers
//! - `follow` — list + watch the store, re-index one owner per event
//!
//! This crate must not know about network namespaces or the lab: the caller binds the sockets
//! where clients reach them and hands them over.

pub mod follow;
pub mod records;
pub mod server;
mod udp;
pub mod wire;
pub mod zone;

/// The hickory version this crate serves with (for callers that build the TCP server).
pub use hickory_server;
pub use records::{DEFAULT_TTL, ZoneConfig};
pub use server::{Forwarder, Handler, SharedZone, UdpMode};
pub use zone::{Answer, Lookup, Owner, Zone};
