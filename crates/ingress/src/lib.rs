//! The ingress gateway (design.md §8): serves Ingress v1 objects of the IngressClass
//! `flatnet` over HTTP/1.1 (keep-alive) and HTTP/2, cleartext and TLS (certificates from
//! `kubernetes.io/tls` Secrets, chosen by SNI), forwarding to the ready endpoints of the
//! backend Service ports over pooled keep-alive connections, and publishes its address in
//! each served Ingress's `status.loadBalancer`.
//!
//! # Layout
//! - [`routes`] — pure: snapshot of the store -> [`RouteTable`] (host and path matching,
//!   precedence, default backends, endpoint resolution, round-robin).
//! - [`tls`] — certificates from Secrets -> [`CertTable`]; the rustls SNI resolver.
//! - [`proxy`] — listeners, routing a request to an endpoint, the HTTP/2 server (hyper).
//! - [`h1`] — the HTTP/1.x server: heads parsed in place, bodies passed through, upgrades.
//! - [`client`] — the backend HTTP/1.1 client, run in the request's task (httparse; bodies
//!   by length, chunked or until close; retries on a pooled connection found closed).
//! - [`pool`] — kept-alive backend connections per endpoint.
//! - [`watch`] — list + watch, compile, publish, Ingress status (status writes are pure
//!   functions tested without a store).
//! - [`run`](mod@run) — the process: proxy threads in the serving namespace, the store client
//!   in its own thread (and, in the lab, namespace).
//!
//! This crate must not touch kernel networking state (routes, nftables, links): it only opens
//! sockets.

pub mod client;
pub mod h1;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod run;
pub mod tls;
pub mod watch;

pub use proxy::{Proxy, Shared};
pub use routes::{ClassFilter, Compiled, RouteTable, Snapshot, compile};
pub use run::{GatewayError, Options, run};
pub use tls::CertTable;
pub use watch::WatchConfig;
