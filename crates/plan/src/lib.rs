//! Pure compilers from cluster state to what a node's dataplane must hold.
//!
//! # Layout
//! - [`services`]: Services + EndpointSlices -> the elements of the service proxy's nftables
//!   maps (and the few fixed chains they point at), plus the diff between two such plans.
//! - [`policy`]: Namespaces + Pods + NetworkPolicies -> per-pod rules, and an evaluator that
//!   says whether a flow is allowed and which rule decided.
//! - [`nft_chain`]: one chain as idempotent `nft -f` text, for every table flatnet renders.
//!
//! This crate does no IO: no kernel, no store, no files. The agent feeds it values and
//! applies what it returns through `datapath`.

pub mod policy;
pub mod services;

/// Appends one chain of `table` (`"inet flatnet"`) as `nft -f` text: declared (with its hook,
/// for base chains), flushed and refilled, so running it again changes nothing.
pub fn nft_chain(s: &mut String, table: &str, name: &str, hook: Option<&str>, rules: &[String]) {
    use std::fmt::Write as _;
    match hook {
        Some(h) => {
            let _ = writeln!(s, "add chain {table} {name} {{ {h} }}");
        }
        None => {
            let _ = writeln!(s, "add chain {table} {name}");
        }
    }
    let _ = writeln!(s, "flush chain {table} {name}");
    for r in rules {
        let _ = writeln!(s, "add rule {table} {name} {r}");
    }
}
