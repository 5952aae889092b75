//! Fills etcd with synthetic Services and EndpointSlices for the agent RSS benchmark of issue 5
//! (`bench/services/run.sh`), waits for an agent to apply them and changes them one at a time.
//!
//! ```text
//! load_services --etcd URL --mode load   --services N [--endpoints M] [--concurrency C]
//! load_services --etcd URL --mode wait   --node NODE --revision R [--timeout-s T]
//! load_services --etcd URL --mode change --node NODE --services N [--endpoints M]
//!               [--changes K] [--seed X] [--timeout-s T]
//! ```
//!
//! - `load` writes `/flatnet/config` (pod CIDR 10.128.0.0/9, /24 per node, host-gw) and the
//!   N services and N slices of `common` (the same objects `proxy_sync` compiles), C puts in
//!   flight; prints `{"revision", "puts", "seconds"}`.
//! - `wait` returns once `/flatnet/agents/NODE` reports `proxy.appliedRevision >= R`; prints
//!   the seconds waited.
//! - `change` replaces one endpoint of a random service K times; each time it waits until the
//!   agent reports the put's revision applied (watching the status key), and prints the
//!   latencies (put returned -> status written) with min/median/p90/max in milliseconds.
//!
//! Every wait ends after the timeout (default 600 s) with an error.

mod common;

use std::time::{Duration, Instant};

use common::{Opts, Rng, summary};
use serde_json::{Value, json};
use store::{EtcdStore, Store, WatchEvent};

const PREFIX: &str = "/flatnet/";

fn service_key(i: usize) -> String {
    store::keys::object(
        model::Kind::Service,
        Some(common::NAMESPACE),
        &common::service_name(i),
    )
}

fn slice_key(i: usize) -> String {
    store::keys::object(
        model::Kind::EndpointSlice,
        Some(common::NAMESPACE),
        &common::slice_name(i),
    )
}

fn bytes(v: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("encode: {e}"))
}

async fn load(store: &EtcdStore, n: usize, m: usize, concurrency: usize) -> Result<Value, String> {
    let config = json!({"podCIDR": common::POD_CIDR, "nodePrefixLength": 24,
                        "serviceCIDR": common::SERVICE_CIDR, "backend": "host-gw"});
    store
        .put(store::keys::CONFIG, bytes(&config)?)
        .await
        .map_err(|e| format!("put {}: {e}", store::keys::CONFIG))?;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let store = store.clone();
        workers.spawn(async move {
            let mut last = 0i64;
            for i in (w..n).step_by(concurrency) {
                let puts = [
                    (service_key(i), common::service_json(i)),
                    (
                        slice_key(i),
                        common::slice_json(i, &common::initial_ips(i, m)),
                    ),
                ];
                for (key, value) in puts {
                    let r = store
                        .put(&key, bytes(&value)?)
                        .await
                        .map_err(|e| format!("put {key}: {e}"))?;
                    last = last.max(r);
                }
            }
            Ok::<i64, String>(last)
        });
    }
    let mut revision = 0;
    while let Some(r) = workers.join_next().await {
        let r = r.map_err(|e| format!("put worker: {e}"))??;
        revision = revision.max(r);
    }
    Ok(json!({"revision": revision, "puts": 2 * n, "seconds": started.elapsed().as_secs_f64()}))
}

/// `proxy.appliedRevision` of the agent status value, if it has one.
fn applied(value: &[u8]) -> Option<i64> {
    let v: Value = serde_json::from_slice(value).ok()?;
    v.pointer("/proxy/appliedRevision")?.as_i64()
}

/// Waits until the status of `node` reports `revision` applied; watching the key, so the
/// wait ends when the status is written, not at the next poll.
async fn wait_applied(
    store: &EtcdStore,
    node: &str,
    revision: i64,
    timeout: Duration,
) -> Result<(), String> {
    let key = store::keys::agent(node);
    let deadline = Instant::now() + timeout;
    let (kvs, listed_at) = store
        .list(&key)
        .await
        .map_err(|e| format!("list {key}: {e}"))?;
    if kvs
        .iter()
        .any(|kv| kv.key == key && applied(&kv.value) >= Some(revision))
    {
        return Ok(());
    }
    let mut watch = store
        .watch(&key, listed_at + 1)
        .await
        .map_err(|e| format!("watch {key}: {e}"))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, watch.recv())
            .await
            .map_err(|_| {
                format!(
                    "{node} did not report proxy.appliedRevision >= {revision} within {timeout:?}"
                )
            })?;
        match ev {
            Some(Ok(WatchEvent::Put(kv))) if kv.key == key => {
                if applied(&kv.value) >= Some(revision) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("watch {key}: {e}")),
            None => return Err(format!("watch {key} closed")),
        }
    }
}

async fn change(
    store: &EtcdStore,
    node: &str,
    n: usize,
    m: usize,
    k: usize,
    seed: u64,
    timeout: Duration,
) -> Result<Value, String> {
    let mut rng = Rng::new(seed);
    let mut ips: std::collections::BTreeMap<usize, Vec<std::net::Ipv4Addr>> =
        std::collections::BTreeMap::new();
    let mut samples = Vec::with_capacity(k);
    for c in 0..k {
        let (s, j) = (rng.below(n), rng.below(m));
        let cur = ips.entry(s).or_insert_with(|| common::initial_ips(s, m));
        // Far above proxy_sync's replacements, in case both run against one store.
        cur[j] = common::fresh_ip(1_000_000 + c);
        let value = bytes(&common::slice_json(s, cur))?;
        let key = slice_key(s);
        let r = store
            .put(&key, value)
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
        let t = Instant::now();
        wait_applied(store, node, r, timeout).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(json!({"changes": k, "put_to_status_ms": summary(&samples)}))
}

async fn run() -> Result<Value, String> {
    let opts = Opts::parse(&[
        "etcd",
        "mode",
        "services",
        "endpoints",
        "concurrency",
        "node",
        "revision",
        "changes",
        "seed",
        "timeout-s",
    ])?;
    let etcd = opts.required("etcd")?.to_string();
    let timeout = Duration::from_secs(opts.number("timeout-s", 600u64)?);
    let store = EtcdStore::connect(std::slice::from_ref(&etcd), PREFIX)
        .await
        .map_err(|e| format!("connect to {etcd}: {e}"))?;
    let services = || -> Result<usize, String> {
        let n: usize = opts.number("services", 0)?;
        if n == 0 || n > common::MAX_SERVICES {
            return Err(format!(
                "option --services: {n} is out of range 1..={}",
                common::MAX_SERVICES
            ));
        }
        Ok(n)
    };
    let m: usize = opts.number("endpoints", 10)?;
    if m == 0 {
        return Err("option --endpoints: must be at least 1".to_string());
    }
    match opts.required("mode")? {
        "load" => {
            let c: usize = opts.number("concurrency", 64)?;
            if c == 0 {
                return Err("option --concurrency: must be at least 1".to_string());
            }
            load(&store, services()?, m, c).await
        }
        "wait" => {
            let node = opts.required("node")?;
            let revision: i64 = opts.number("revision", 0)?;
            let t = Instant::now();
            wait_applied(&store, node, revision, timeout).await?;
            Ok(json!({"node": node, "revision": revision,
                      "seconds": t.elapsed().as_secs_f64()}))
        }
        "change" => {
            let node = opts.required("node")?;
            let k: usize = opts.number("changes", 20)?;
            let seed: u64 = opts.number("seed", 7)?;
            change(&store, node, services()?, m, k, seed, timeout).await
        }
        other => Err(format!(
            "option --mode: {other:?} is not one of load, wait, change"
        )),
    }
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("load_services: {e}");
            std::process::exit(1);
        }
    }
}
