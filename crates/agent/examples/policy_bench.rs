//! NetworkPolicy benchmark (issue 6), run by `bench/policy/run.sh`.
//!
//! ```text
//! policy_bench [--levels 0,100,1000] [--pods 1000] [--reps 5] [--secs 2] [--changes 20]
//! ```
//!
//! Makes its own namespaces (`fpb<pid>-*`, removed on exit): a node with two pods wired as
//! flatnet-cni wires them (client 10.244.0.5, server 10.244.0.7, one forward hop apart), and
//! runs the agent's own code (`agent::run_with` over an in-memory store, `NetnsDataplanes` in
//! the node namespace). The store holds `--pods` pods (the two real ones plus addressed pods
//! of another node at non-adjacent addresses, so every peer is its own set element) and, per
//! level L, L NetworkPolicies selecting the server, policy i allowing TCP 5000 from pod i (the
//! last one from the client).
//!
//! 1. Per-packet cost: for every rep, for every level (order rotated each rep), the policies
//!    are written, the agent applies them, and then from the client: TCP_RR (one connection,
//!    1-byte request/response round trips for `--secs`) and TCP_CRR (a new connection per
//!    round trip; the client namespace reuses TIME_WAIT ports, the node forgets closed
//!    connections after 1 s). Every CRR connection's SYN goes
//!    through the policy sets; RR packets after the first are conntrack-established.
//! 2. Change latency at the highest level: `--changes` times one policy's peer is replaced;
//!    end to end from the store write until the agent's status reports the revision applied,
//!    and the agent's own compile + diff + apply time (`policy.lastSyncMicros`).
//!
//! Prints one JSON object on stdout; progress on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::{AgentConfig, NetnsDataplanes};
use datapath::NetNs;
use serde_json::{Value, json};
use store::contract::AgentStatus;
use store::{MemStore, Store};
use testkit::TestNs;

const CLIENT: &str = "10.244.0.5";
const SERVER: &str = "10.244.0.7";
const PORT: u16 = 5000;
const NODE: &str = "bench";

/// Runs `sysctl -qw kv` inside `ns`.
fn sysctl(ns: &TestNs, kv: &str) {
    assert!(
        ns.exec_ok(&["sysctl", "-qw", kv]),
        "sysctl {kv} in {}",
        ns.name()
    );
}

/// A namespace for the bench (`fpb-<pid>-<n>`), removed on drop.
fn netns() -> TestNs {
    TestNs::create("fpb").unwrap_or_else(|e| panic!("cannot make a namespace (root?): {e}"))
}

/// Address of synthetic peer pod `i`: non-adjacent, so no two peers merge into one range.
fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 245, (i / 100) as u8, (2 * (i % 100) + 2) as u8)
}

fn pod_json(name: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"podIP": ip, "phase": "Running"}})
}

fn policy_json(i: usize, from: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("p{i:05}"), "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": from}}],
                              "ports": [{"protocol": "TCP", "port": PORT}]}]}})
}

fn policy_key(i: usize) -> String {
    format!("objects/networkpolicies/default/p{i:05}")
}

struct Opts {
    levels: Vec<usize>,
    pods: usize,
    reps: usize,
    secs: f64,
    changes: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        levels: vec![0, 100, 1000],
        pods: 1000,
        reps: 5,
        secs: 2.0,
        changes: 20,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--levels" => o.levels = v.split(',').map(|x| x.parse().unwrap()).collect(),
            "--pods" => o.pods = v.parse().unwrap(),
            "--reps" => o.reps = v.parse().unwrap(),
            "--secs" => o.secs = v.parse().unwrap(),
            "--changes" => o.changes = v.parse().unwrap(),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Serves 1-byte request/response exchanges, one connection at a time.
/// Ends when `stop` is set and one more connection arrives.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nodelay(true).unwrap();
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn exchange(s: &mut TcpStream) -> bool {
    let mut b = [7u8; 1];
    s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok()
}

/// Transactions per second over `secs`: one connection (RR) or one per transaction (CRR).
fn measure(client: &NetNs, new_conn: bool, secs: f64) -> f64 {
    let addr: SocketAddr = format!("{SERVER}:{PORT}").parse().unwrap();
    client
        .run(|| {
            let connect = || {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
                s.set_nodelay(true).unwrap();
                s
            };
            let mut n = 0u64;
            let start = Instant::now();
            let end = Duration::from_secs_f64(secs);
            if new_conn {
                while start.elapsed() < end {
                    let mut s = connect();
                    assert!(exchange(&mut s), "exchange failed");
                    n += 1;
                }
            } else {
                let mut s = connect();
                while start.elapsed() < end {
                    assert!(exchange(&mut s), "exchange failed");
                    n += 1;
                }
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .unwrap()
}

async fn status(store: &MemStore) -> Option<AgentStatus> {
    store
        .get(&store::keys::agent(NODE))
        .await
        .unwrap()
        .and_then(|kv| kv.decode().ok())
}

/// Waits until the agent reports `rev` applied (and no error); the status seen.
async fn applied(store: &MemStore, rev: i64) -> AgentStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut w = store.watch(&store::keys::agent(NODE), 0).await.unwrap();
    loop {
        if let Some(s) = status(store).await
            && s.policy.applied_revision >= rev
        {
            assert!(s.policy.last_error.is_none(), "{:?}", s.policy.last_error);
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not apply revision {rev}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), w.recv()).await;
    }
}

/// Writes the policies of `level` (deleting the others); the revision of the last write.
async fn set_level(store: &MemStore, have: &mut usize, level: usize) -> i64 {
    let mut rev = 0;
    for i in level..*have {
        store.delete(&policy_key(i)).await.unwrap();
        rev = store.revision().await.unwrap();
    }
    for i in 0..level {
        let from = if i + 1 == level {
            json!({"app": "client"})
        } else {
            json!({"peer": i.to_string()})
        };
        rev = store
            .put(
                &policy_key(i),
                serde_json::to_vec(&policy_json(i, from)).unwrap(),
            )
            .await
            .unwrap();
    }
    *have = level;
    rev
}

/// Per level: RR rates, CRR rates, set elements.
type Samples = (Vec<f64>, Vec<f64>, Vec<usize>);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // RUST_LOG=netpol=debug shows the agent's compile and apply times per batch.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let o = opts();
    let node = netns();
    sysctl(&node, "net.ipv4.ip_forward=1");
    // The agent's underlay: any link with an address.
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    node.ip(&["addr", "add", "10.99.0.1/24", "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    // CRR makes thousands of connections per second: let them not pile up.
    sysctl(&node, "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1");
    let client_ns = testkit::pod(&node, CLIENT, "flc");
    sysctl(&client_ns, "net.ipv4.tcp_tw_reuse=1");
    sysctl(&client_ns, "net.ipv4.ip_local_port_range=1024 65000");
    let server_ns = testkit::pod(&node, SERVER, "fls");
    let client = NetNs::open(client_ns.path()).unwrap();
    let server = NetNs::open(server_ns.path()).unwrap();
    let listener = server
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .unwrap()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let srv = std::thread::spawn({
        let stop = stop.clone();
        move || serve(listener, stop)
    });

    let store = MemStore::new();
    let cfg = json!({"podCIDR": "10.244.0.0/15", "nodePrefixLength": 24,
                     "serviceCIDR": "10.96.0.0/16", "backend": "host-gw"});
    store
        .put(store::keys::CONFIG, serde_json::to_vec(&cfg).unwrap())
        .await
        .unwrap();
    store
        .put(
            "objects/namespaces/_/default",
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "default"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut pods = vec![
        pod_json("client", CLIENT, NODE, json!({"app": "client"})),
        pod_json("server", SERVER, NODE, json!({"app": "server"})),
    ];
    for i in 0..o.pods.saturating_sub(2) {
        pods.push(pod_json(
            &format!("peer-{i:05}"),
            &peer_ip(i).to_string(),
            "elsewhere",
            json!({"peer": i.to_string()}),
        ));
    }
    for p in &pods {
        let key = format!(
            "objects/pods/default/{}",
            p["metadata"]["name"].as_str().unwrap()
        );
        store
            .put(&key, serde_json::to_vec(p).unwrap())
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("fpb{}", std::process::id()));
    let agent_cfg = AgentConfig {
        netns: Some(node.path()),
        etcd_endpoints: vec![],
        store_prefix: agent::DEFAULT_STORE_PREFIX.into(),
        routes: agent::RoutesConfig {
            node: NODE.into(),
            underlay_dev: "eth0".into(),
            cni_conf_path: dir.join("net.d/10-flatnet.conflist"),
            ipam_dir: dir.join("ipam"),
            state_dir: dir.join("state"),
            lease_ttl: Duration::from_secs(15),
        },
    };
    let dp = NetnsDataplanes::open(Some(&node.path())).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn({
        let store = store.clone();
        async move {
            agent::run_with(store, dp, agent_cfg, async {
                let _ = rx.await;
            })
            .await
        }
    });
    let rev = store.revision().await.unwrap();
    applied(&store, rev).await;
    eprintln!("agent up with {} pods", pods.len());

    let mut have = 0;
    let mut results: Vec<Value> = Vec::new();
    let mut samples: std::collections::BTreeMap<usize, Samples> = Default::default();
    for rep in 0..o.reps {
        let mut order = o.levels.clone();
        order.rotate_left(rep % o.levels.len());
        for &level in &order {
            let rev = set_level(&store, &mut have, level).await;
            let st = applied(&store, rev).await;
            let rr = tokio::task::block_in_place(|| measure(&client, false, o.secs));
            let crr = tokio::task::block_in_place(|| measure(&client, true, o.secs));
            eprintln!(
                "rep {rep} level {level}: RR {rr:.0}/s CRR {crr:.0}/s ({} elements)",
                st.policy.elements
            );
            let e = samples.entry(level).or_default();
            e.0.push(rr);
            e.1.push(crr);
            e.2.push(st.policy.elements);
            results.push(json!({"rep": rep, "policies": level, "rr": rr, "crr": crr,
                                "elements": st.policy.elements}));
        }
    }
    let mut summary = Vec::new();
    let base = samples.get(&o.levels[0]).map(|s| {
        let (mut a, mut b) = (s.0.clone(), s.1.clone());
        (median(&mut a), median(&mut b))
    });
    for (level, (rr, crr, el)) in &mut samples {
        let (mrr, mcrr) = (median(rr), median(crr));
        summary.push(json!({"policies": level, "rr_median": mrr, "crr_median": mcrr,
            "rr_ratio": base.map(|b| mrr / b.0), "crr_ratio": base.map(|b| mcrr / b.1),
            "rr_min": rr.first(), "rr_max": rr.last(), "crr_min": crr.first(), "crr_max": crr.last(),
            "elements": el.first()}));
    }

    // Change latency at the highest level: one policy's peer replaced each time.
    let top = *o.levels.iter().max().unwrap();
    set_level(&store, &mut have, top).await;
    applied(&store, store.revision().await.unwrap()).await;
    let mut e2e = Vec::new();
    let mut agent_ms = Vec::new();
    for c in 0..o.changes {
        let i = c % top.max(1).saturating_sub(1).max(1);
        let peer = (i + 1 + c) % o.pods.saturating_sub(2).max(1);
        let body = serde_json::to_vec(&policy_json(i, json!({"peer": peer.to_string()}))).unwrap();
        let t = Instant::now();
        let rev = store.put(&policy_key(i), body).await.unwrap();
        let st = applied(&store, rev).await;
        e2e.push(t.elapsed().as_secs_f64() * 1000.0);
        agent_ms.push(st.policy.last_sync_micros as f64 / 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summarize = |v: &mut Vec<f64>| {
        let med = median(v);
        json!({"median": med, "min": v.first(), "max": v.last(), "n": v.len()})
    };
    let out = json!({
        "pods": pods.len(), "levels": o.levels, "reps": o.reps, "secs": o.secs,
        "per_packet": summary, "samples": results,
        "change": {"policies": top, "end_to_end_ms": summarize(&mut e2e),
                   "agent_sync_ms": summarize(&mut agent_ms)},
    });
    println!("{out}");
    stop.store(true, Ordering::Relaxed);
    let addr: SocketAddr = format!("{SERVER}:{PORT}").parse().unwrap();
    let _ = client.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
    let _ = tx.send(());
    let _ = agent_task.await;
    let _ = srv.join();
    let _ = std::fs::remove_dir_all(&dir);
}
