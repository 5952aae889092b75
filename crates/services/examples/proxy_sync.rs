//! Rule-sync benchmark of the service proxy (issue 5), run by `bench/services/run.sh`.
//!
//! ```text
//! proxy_sync --netns /run/netns/NAME --services N [--endpoints M] [--changes K]
//!            [--scale-changes S] [--seed X] [--strip-map-sizes 0|1]
//! ```
//!
//! In the given (fresh, empty) namespace, with the agent's own code path (a [`Compiler`] fed
//! decoded objects, [`Applier`] over [`NetnsProxy`]):
//! 1. full sync: decode N synthetic ClusterIP services with M ready endpoints each into the
//!    compiler, compile, apply (`nft -f` of the structure, one netlink batch of every element,
//!    `nft -j list chains`);
//! 2. restart sync: a fresh compiler and [`Applier`] load the same objects again over the
//!    loaded table (what a restarted agent does: flush and reload the maps in one batch);
//! 3. K changes: one endpoint of a random service gets a new address; each is timed as the
//!    agent does it (decode the changed slice into the compiler, recompile what changed, diff,
//!    apply), each step also alone;
//! 4. S scale changes: a random service gains an (M+1)-th endpoint, then loses it again, which
//!    makes the proxy create and later delete the `lb-(M+1)` chain (an `nft -f` each time);
//! 5. verification against the kernel: the `backends` map holds N*M elements, `services` N,
//!    the last new address is in place and the one it replaced is gone.
//!
//! Prints one JSON line (times in milliseconds) on stdout; progress on stderr. The namespace
//! is made and removed by the caller.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use common::{Opts, Rng, summary};
use datapath::nft::{Data, Field, FieldKind, Nft};
use model::{EndpointSlice, Service};
use serde_json::{Value, json};
use services::{
    self as svc, Applier, Backend, Compiler, ElemOp, Frontend, KernelError, NetnsProxy, NodeView,
    ProxyDataplane,
};

/// A [`ProxyDataplane`] that times every call of the one it wraps.
struct Timed<D> {
    inner: D,
    calls: Vec<Call>,
}

struct Call {
    what: &'static str,
    ms: f64,
    /// Element operations in the batch (`nft_elements`), script bytes (`nft_script`).
    size: usize,
}

impl<D: ProxyDataplane> Timed<D> {
    fn time<T>(&mut self, what: &'static str, size: usize, f: impl FnOnce(&mut D) -> T) -> T {
        let t = Instant::now();
        let r = f(&mut self.inner);
        self.calls.push(Call {
            what,
            ms: ms(t),
            size,
        });
        r
    }

    /// Milliseconds spent in the wrapped dataplane since the last `take`.
    fn spent(&self) -> f64 {
        self.calls.iter().map(|c| c.ms).sum()
    }

    /// The calls since the last `take`, summed per kind.
    fn take(&mut self) -> Value {
        let mut out = serde_json::Map::new();
        for kind in ["nft_script", "nft_elements", "nft_chains", "conntrack"] {
            let calls: Vec<&Call> = self.calls.iter().filter(|c| c.what == kind).collect();
            if calls.is_empty() {
                continue;
            }
            let total: f64 = calls.iter().map(|c| c.ms).sum();
            let size: usize = calls.iter().map(|c| c.size).sum();
            out.insert(
                kind.to_string(),
                json!({"calls": calls.len(), "ms": round(total), "size": size}),
            );
        }
        self.calls.clear();
        Value::Object(out)
    }
}

impl<D: ProxyDataplane> ProxyDataplane for Timed<D> {
    fn nft_script(&mut self, script: &str) -> Result<(), KernelError> {
        self.time("nft_script", script.len(), |d| d.nft_script(script))
    }

    fn nft_elements(&mut self, ops: &[ElemOp], flush: bool) -> Result<(), KernelError> {
        self.time("nft_elements", ops.len(), |d| d.nft_elements(ops, flush))
    }

    fn nft_chains(&mut self) -> Result<Vec<String>, KernelError> {
        self.time("nft_chains", 0, |d| d.nft_chains())
    }

    fn forget_udp(&mut self, fe: &Frontend, endpoint: Option<Ipv4Addr>) -> Result<(), KernelError> {
        self.time("conntrack", 1, |d| d.forget_udp(fe, endpoint))
    }

    fn forget_affinity(&mut self, mark: u32, gone: &[Backend]) -> Result<(), KernelError> {
        self.time("conntrack", gone.len(), |d| d.forget_affinity(mark, gone))
    }

    fn announce(
        &mut self,
        dev: &str,
        pool: ipnet::Ipv4Net,
        ips: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Result<(), KernelError> {
        self.inner.announce(dev, pool, ips)
    }
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| round(*x)).collect()
}

/// `VmallocUsed` and `SUnreclaim` of `/proc/meminfo` in KiB (machine-wide: other work on the
/// machine shows up too).
fn kernel_mem() -> (i64, i64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmallocUsed"), field("SUnreclaim"))
}

/// `VmRSS` of this process in MiB (0 if unreadable).
fn rss_mib() -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| (kib / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The synthetic cluster: the endpoint addresses of every service.
struct Cluster {
    ips: Vec<Vec<Ipv4Addr>>,
}

impl Cluster {
    fn new(n: usize, m: usize) -> Cluster {
        Cluster {
            ips: (0..n).map(|i| common::initial_ips(i, m)).collect(),
        }
    }

    /// Decodes every Service and EndpointSlice into `c` from their stored JSON, as the agent
    /// takes a listing. Returns the milliseconds spent decoding and taking (the JSON is made
    /// outside that time).
    fn load(&self, c: &mut Compiler) -> Result<f64, String> {
        let mut spent = 0.0;
        for i in 0..self.ips.len() {
            let bytes = json_bytes(&common::service_json(i))?;
            let t = Instant::now();
            let s: Service = serde_json::from_slice(&bytes)
                .map_err(|e| format!("synthetic service {i}: {e}"))?;
            c.upsert_service(&s);
            spent += ms(t);
            spent += self.take_slice(c, i)?;
        }
        Ok(spent)
    }

    /// Decodes the EndpointSlice of service `i` into `c`, as the agent takes a watch event.
    /// Returns the milliseconds spent.
    fn take_slice(&self, c: &mut Compiler, i: usize) -> Result<f64, String> {
        let bytes = json_bytes(&common::slice_json(i, &self.ips[i]))?;
        let t = Instant::now();
        let s: EndpointSlice = serde_json::from_slice(&bytes)
            .map_err(|e| format!("synthetic endpointslice {i}: {e}"))?;
        c.upsert_slice(&s);
        Ok(ms(t))
    }
}

/// An object as the store holds it.
fn json_bytes(v: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("encode synthetic object: {e}"))
}

/// Samples of one kind of change.
#[derive(Default)]
struct Samples {
    take: Vec<f64>,
    compile: Vec<f64>,
    diff: Vec<f64>,
    apply: Vec<f64>,
    /// Of `apply`, the time inside the dataplane (netlink batches, `nft` runs).
    dataplane: Vec<f64>,
    total: Vec<f64>,
    ops: Vec<f64>,
    breakdown: Vec<Value>,
}

impl Samples {
    fn report(&self) -> Value {
        json!({
            "total_ms": summary(&self.total),
            "take_ms": summary(&self.take),
            "compile_ms": summary(&self.compile),
            "diff_ms": summary(&self.diff),
            "apply_ms": summary(&self.apply),
            "dataplane_ms": summary(&self.dataplane),
            "element_ops": summary(&self.ops),
            "apply_calls": self.breakdown,
            "samples": {"total_ms": rounded(&self.total), "apply_ms": rounded(&self.apply),
                        "dataplane_ms": rounded(&self.dataplane)},
        })
    }
}

struct Bench {
    cluster: Cluster,
    compiler: Compiler,
    dp: Timed<NetnsProxy>,
    applier: Applier,
}

impl Bench {
    /// Loads every object into the (fresh) compiler and applies it: a full sync.
    fn sync(&mut self) -> Result<Value, String> {
        let rss0 = rss_mib();
        let take_ms = self.cluster.load(&mut self.compiler)?;
        let rss_decoded = rss_mib();
        let t = Instant::now();
        self.compiler.update();
        let compile_ms = ms(t);
        let rss_compiled = rss_mib();
        let t = Instant::now();
        let work = self.applier.prepare(&mut self.compiler);
        let diff_ms = ms(t);
        let rss_prepared = rss_mib();
        let elements = work.element_ops();
        let (vmalloc0, slab0) = kernel_mem();
        let t = Instant::now();
        let result = work.run(&mut self.dp);
        self.applier.finish(&result);
        result.map_err(|e| e.to_string())?;
        let apply_ms = ms(t);
        let rss_applied = rss_mib();
        let (vmalloc1, slab1) = kernel_mem();
        let mib = |kib: i64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
        Ok(json!({
            "total_ms": round(take_ms + compile_ms + diff_ms + apply_ms),
            "take_ms": round(take_ms), "compile_ms": round(compile_ms),
            "diff_ms": round(diff_ms), "apply_ms": round(apply_ms),
            "elements": elements, "apply_calls": self.dp.take(),
            "kernel_mem_delta_mib": {"VmallocUsed": mib(vmalloc1 - vmalloc0),
                                     "SUnreclaim": mib(slab1 - slab0)},
            // This process's VmRSS before, after decoding the objects into the compiler,
            // after compiling, after planning the kernel work, after applying it.
            "rss_mib": {"before": rss0, "decoded": rss_decoded, "compiled": rss_compiled,
                        "prepared": rss_prepared, "applied": rss_applied},
        }))
    }

    /// Takes the slice of service `i` and applies it as the agent would; records one sample.
    fn change(&mut self, i: usize, out: &mut Samples) -> Result<(), String> {
        let take_ms = self.cluster.take_slice(&mut self.compiler, i)?;
        let t = Instant::now();
        self.compiler.update();
        let compile_ms = ms(t);
        let t = Instant::now();
        let work = self.applier.prepare(&mut self.compiler);
        let diff_ms = ms(t);
        let ops = work.element_ops();
        let t = Instant::now();
        let result = work.run(&mut self.dp);
        self.applier.finish(&result);
        result.map_err(|e| e.to_string())?;
        let apply_ms = ms(t);
        out.take.push(take_ms);
        out.compile.push(compile_ms);
        out.diff.push(diff_ms);
        out.apply.push(apply_ms);
        out.dataplane.push(self.dp.spent());
        out.total.push(take_ms + compile_ms + diff_ms + apply_ms);
        out.ops.push(ops as f64);
        out.breakdown.push(self.dp.take());
        Ok(())
    }
}

fn run() -> Result<Value, String> {
    let opts = Opts::parse(&[
        "netns",
        "services",
        "endpoints",
        "changes",
        "scale-changes",
        "seed",
    ])?;
    let netns = PathBuf::from(opts.required("netns")?);
    let n: usize = opts.number("services", 0)?;
    let m: usize = opts.number("endpoints", 10)?;
    let k: usize = opts.number("changes", 20)?;
    let scale: usize = opts.number("scale-changes", 4)?;
    let seed: u64 = opts.number("seed", 1)?;
    if n == 0 || n > common::MAX_SERVICES {
        return Err(format!(
            "option --services: {n} is out of range 1..={}",
            common::MAX_SERVICES
        ));
    }
    if m == 0 || n.saturating_mul(m + 1) > common::MAX_ENDPOINTS {
        return Err(format!(
            "option --endpoints: {m} is out of range (1.., with services x (endpoints+1) <= {})",
            common::MAX_ENDPOINTS
        ));
    }
    let cluster_cidr = common::POD_CIDR
        .parse()
        .map_err(|e| format!("pod CIDR {}: {e}", common::POD_CIDR))?;
    let node = NodeView {
        name: "bench-node".to_string(),
        addresses: vec![Ipv4Addr::new(192, 0, 2, 11)],
        cluster_cidr,
        service_cidr: None,
        nodes: Vec::new(),
    };

    eprintln!("proxy_sync: building {n} services x {m} endpoints");
    let rss_start = rss_mib();
    let cluster = Cluster::new(n, m);
    let dp = NetnsProxy::open(Some(&netns))
        .map_err(|e| format!("open namespace {}: {e}", netns.display()))?;
    let mut b = Bench {
        cluster,
        compiler: Compiler::new(node.clone()),
        dp: Timed {
            inner: dp,
            calls: Vec::new(),
        },
        applier: Applier::default(),
    };

    // 1. Full sync into an empty namespace.
    eprintln!("proxy_sync: full sync");
    let full = b.sync()?;
    let (n_services, n_backends) = (
        b.compiler.plan().services.len(),
        b.compiler.plan().backends.len(),
    );
    if n_services != n || n_backends != n * m {
        return Err(format!(
            "compiled {n_services} services and {n_backends} backends, expected {n} and {}",
            n * m
        ));
    }
    let rss_loaded = rss_mib();

    // 2. Restart: a new compiler and applier reload everything over the loaded table.
    eprintln!("proxy_sync: restart sync");
    b.compiler = Compiler::new(node);
    b.applier = Applier::default();
    let restart = b.sync()?;

    // 3. One endpoint replaced, K times.
    eprintln!("proxy_sync: {k} endpoint changes");
    let mut rng = Rng::new(seed);
    let mut changes = Samples::default();
    let mut fresh = 0usize;
    let mut last: Option<(usize, Ipv4Addr, Ipv4Addr)> = None;
    for _ in 0..k {
        let (s, j) = (rng.below(n), rng.below(m));
        let new_ip = common::fresh_ip(fresh);
        fresh += 1;
        let old_ip = std::mem::replace(&mut b.cluster.ips[s][j], new_ip);
        b.change(s, &mut changes)?;
        last = Some((s, old_ip, new_ip));
    }

    // 4. An endpoint added to a service, then removed: a new endpoint count makes a chain.
    eprintln!("proxy_sync: {scale} scale changes");
    let mut scaled = Samples::default();
    let mut adds = 0usize;
    for step in 0..scale {
        if step % 2 == 0 {
            adds = rng.below(n);
            b.cluster.ips[adds].push(common::fresh_ip(fresh));
            fresh += 1;
        } else {
            b.cluster.ips[adds].pop();
        }
        b.change(adds, &mut scaled)?;
    }
    if scale % 2 == 1 {
        // Leave every service with m endpoints for the verification.
        b.cluster.ips[adds].pop();
        b.change(adds, &mut Samples::default())?;
    }

    // 5. What the kernel holds.
    eprintln!("proxy_sync: verifying");
    let verified = verify(&netns, n, m, last)?;

    Ok(json!({
        "services": n, "endpoints": m, "changes": k, "scale_changes": scale, "seed": seed,
        // This process's VmRSS: at start; with the N services loaded into the compiler and
        // applied; at the end (after the restart's second compiler replaced the first).
        "rss_mib": {"start": rss_start, "loaded": rss_loaded, "end": rss_mib()},
        "full": full, "restart": restart,
        "change": changes.report(), "scale": scaled.report(),
        "verified": verified,
    }))
}

/// Reads the maps back from the kernel and checks them; returns what was checked.
fn verify(
    netns: &std::path::Path,
    n: usize,
    m: usize,
    last: Option<(usize, Ipv4Addr, Ipv4Addr)>,
) -> Result<Value, String> {
    let mut nft = Nft::open(Some(netns)).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let backends = nft
        .list_elements(
            svc::TABLE,
            svc::maps::BACKENDS,
            &[
                FieldKind::Ipv4,
                FieldKind::Proto,
                FieldKind::Port,
                FieldKind::Mark,
            ],
            Some(&[FieldKind::Ipv4, FieldKind::Port]),
        )
        .map_err(|e| e.to_string())?;
    let list_ms = ms(t);
    let services = nft
        .list_elements(
            svc::TABLE,
            svc::maps::SERVICES,
            &[FieldKind::Ipv4, FieldKind::Proto, FieldKind::Port],
            None,
        )
        .map_err(|e| e.to_string())?;
    if backends.len() != n * m {
        return Err(format!(
            "the kernel holds {} backends elements, expected {}",
            backends.len(),
            n * m
        ));
    }
    if services.len() != n {
        return Err(format!(
            "the kernel holds {} services elements, expected {n}",
            services.len()
        ));
    }
    let target = |e: &datapath::nft::Element| match &e.data {
        Some(Data::Concat(d)) => match d.as_slice() {
            [Field::Ipv4(ip), Field::Port(_)] => Some(*ip),
            _ => None,
        },
        _ => None,
    };
    let mut checked_last = Value::Null;
    if let Some((s, old_ip, new_ip)) = last {
        let cip = common::cluster_ip(s);
        let of_service: Vec<Ipv4Addr> = backends
            .iter()
            .filter(|e| e.key.first() == Some(&Field::Ipv4(cip)))
            .filter_map(target)
            .collect();
        if !of_service.contains(&new_ip) {
            return Err(format!(
                "service {} ({cip}) has no backend {new_ip} in the kernel: {of_service:?}",
                common::service_name(s)
            ));
        }
        if backends.iter().filter_map(target).any(|ip| ip == old_ip) {
            return Err(format!(
                "replaced endpoint {old_ip} is still in the kernel's backends"
            ));
        }
        checked_last = json!({"service": common::service_name(s), "new": new_ip.to_string(),
                              "old_gone": old_ip.to_string()});
    }
    Ok(
        json!({"backends": backends.len(), "services": services.len(),
              "last_change": checked_last, "list_backends_ms": round(list_ms)}),
    )
}

fn main() {
    match run() {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("proxy_sync: {e}");
            std::process::exit(1);
        }
    }
}
