//! The lab: a flatnet cluster built from network namespaces on one machine, with a real etcd,
//! real pods (processes in namespaces) and real packets.
//!
//! # Layout
//! - `api`: the API server and scheduler part: defaulting, storing, binding pods, Deployments,
//!   Service allocations (with `allocator`, pure: clusterIPs, nodePorts, API defaults).
//! - `names`: every name and path a lab uses (namespaces, state directories), in one place.
//! - `shell`: running `ip` and other host tools, and processes inside a namespace.
//! - `topology`: `lab up` / `lab down`: fabric bridge, node and external namespaces, etcd.
//! - `cleanup`: finds and removes everything a lab left behind, also after a crash.
//! - `runtime`: a minimal CNI runtime (conflist in, plugin chain executed as the spec says).
//! - `controller`: keeps Deployments at their replica count, writes EndpointSlices and
//!   LoadBalancer IPs (decided by `endpoints`, pure).
//! - `converge`: what is not converged yet (for `wait --converged` and `status`).
//! - `daemons`: the lab's long-running processes; stop (kill -9) and start them by name.
//! - `kubelet`: the kubelet role, one process per node: pods in, sandboxes and processes out.
//! - `resolv`: the pod's resolv.conf as the kubelet writes it (pure).
//! - `kube_dns`: the cluster DNS (`flatnet dns`) as `lab up` deploys it.
//! - `responder`: the built-in container that answers with the pod's name.
//! - `client`: how the CLI finds and connects to a running lab's store.
//! - `connectivity`: `flatnet connectivity`: which pods, real probes from inside their
//!   namespaces, the same matrix from the compiled policy, and how both print.
//!
//! The lab plays the parts a real cluster gets from elsewhere (kubelet, runtime, the machines
//! and their cabling). It must not reach into the agent, the plugin or the store's contents
//! beyond what those real parts would do.

pub mod allocator;
pub mod api;
pub mod cleanup;
pub mod client;
pub mod connectivity;
pub mod controller;
pub mod converge;
pub mod daemons;
pub mod endpoints;
pub mod kube_dns;
pub mod kubelet;
pub mod names;
pub mod resolv;
pub mod responder;
pub mod runtime;
pub mod shell;
pub mod topology;
pub mod trace;

pub use names::Lab;

/// Now as RFC 3339 in UTC (`2026-11-25T18:40:21Z`), as Kubernetes timestamps are written.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC (Howard Hinnant's civil-from-days).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_631_221), "2026-11-25T18:27:01Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (fractions and offsets other than Z are not produced by
/// flatnet and are refused).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod parse_time_tests {
    #[test]
    fn parse_inverts_format() {
        for t in [0, 951_782_400, 1_795_631_221] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(t)), Some(t));
        }
        assert_eq!(super::parse_rfc3339("garbage"), None);
    }
}
