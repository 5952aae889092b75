//! Synthetic Services and EndpointSlices shared by the benchmark examples (`proxy_sync`,
//! `load_services`): N ClusterIP services on TCP 80, each with M ready endpoints on 8080 that
//! run on another node, shaped as `crates/agent/tests/proxy_loop.rs` writes them.
#![allow(dead_code)] // each example uses a different part of this module

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// The cluster (pod) CIDR the endpoints come from.
pub const POD_CIDR: &str = "10.128.0.0/9";
/// The service CIDR the ClusterIPs come from.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The node every endpoint runs on (not the node under test, so no endpoint is local).
pub const ENDPOINT_NODE: &str = "bench-other-node";
pub const NAMESPACE: &str = "default";

const SERVICE_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const ENDPOINT_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// Addresses handed out to replaced endpoints (still inside [`POD_CIDR`]).
const FRESH_BASE: u32 = u32::from_be_bytes([10, 192, 0, 0]);
/// ClusterIPs available in 10.96.0.0/12 after the network address.
pub const MAX_SERVICES: usize = (1 << 20) - 2;
/// Endpoint addresses available below [`FRESH_BASE`].
pub const MAX_ENDPOINTS: usize = (FRESH_BASE - ENDPOINT_BASE) as usize - 1;

pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub fn slice_name(i: usize) -> String {
    format!("svc-{i:05}-bench")
}

/// ClusterIP of service `i` (0-based).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(SERVICE_BASE + 1 + i as u32)
}

/// Address of endpoint `j` of service `i`, with `m` endpoints per service.
pub fn endpoint_ip(i: usize, j: usize, m: usize) -> Ipv4Addr {
    Ipv4Addr::from(ENDPOINT_BASE + 1 + (i * m + j) as u32)
}

/// The `c`-th replacement address (distinct from every [`endpoint_ip`]).
pub fn fresh_ip(c: usize) -> Ipv4Addr {
    Ipv4Addr::from(FRESH_BASE + 1 + c as u32)
}

/// Service `i` as stored in `/flatnet/objects/services/default/<name>`.
pub fn service_json(i: usize) -> Value {
    let name = service_name(i);
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(i).to_string(),
                 "clusterIPs": [cluster_ip(i).to_string()], "selector": {"app": name},
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}})
}

/// The EndpointSlice of service `i` with the given ready endpoint addresses.
pub fn slice_json(i: usize, ips: &[Ipv4Addr]) -> Value {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| {
            json!({"addresses": [ip.to_string()],
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": ENDPOINT_NODE})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name(i), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": service_name(i)}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
}

/// The initial endpoint addresses of service `i`.
pub fn initial_ips(i: usize, m: usize) -> Vec<Ipv4Addr> {
    (0..m).map(|j| endpoint_ip(i, j, m)).collect()
}

/// xorshift64*: reproducible choices without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// `--name value` command-line options; every option must be known and have a value.
pub struct Opts(Vec<(String, String)>);

impl Opts {
    pub fn parse(known: &[&str]) -> Result<Opts, String> {
        let mut args = std::env::args().skip(1);
        let mut out = Vec::new();
        while let Some(a) = args.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if !known.contains(&name) {
                return Err(format!(
                    "unknown option --{name} (known: --{})",
                    known.join(", --")
                ));
            }
            let v = args
                .next()
                .ok_or_else(|| format!("option --{name} needs a value"))?;
            out.push((name.to_string(), v));
        }
        Ok(Opts(out))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("option --{name} is required"))
    }

    /// A number option, `default` when absent; a bad value names the option and the value.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("option --{name}: {v:?} is not a valid number")),
        }
    }
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `{"n", "min", "median", "p90", "max"}` of the samples (milliseconds stay milliseconds).
pub fn summary(samples: &[f64]) -> Value {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({"n": v.len(), "min": r(percentile(&v, 0.0)), "median": r(percentile(&v, 50.0)),
           "p90": r(percentile(&v, 90.0)), "max": r(percentile(&v, 100.0))})
}
