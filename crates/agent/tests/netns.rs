//! Tier 1: the agent against real kernels, each test in network namespaces of its own (two
//! "nodes" joined by a veth underlay, pods behind them), removed on every path. Needs root and
//! `ip`; prints SKIPPED otherwise, unless REQUIRE_NETNS=1 (then it fails). The etcd test also
//! needs the etcd binary.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TempDir;
use routes::plan::{
    Backend, Lease, LeaseAttrs, NodePlan, UnderlayInfo, VXLAN_DEVICE, compile, diff,
};
use routes::{Dataplane, NetnsRoutes};
use serde_json::Value;
use store::Store;

#[path = "common/netns.rs"]
mod netns;

use netns::{Ns, ask, name_server, pod, two_nodes};

/// `bridge -j fdb show dev DEV` inside `ns`.
fn bridge_fdb(ns: &Ns, dev: &str) -> Vec<Value> {
    let out = Command::new("bridge")
        .args(["-n", &ns.name, "-j", "fdb", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bridge fdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lease(cidr: &str, node: &str, ip: Ipv4Addr, backend: Backend) -> Lease {
    Lease {
        cidr: cidr.parse().unwrap(),
        attrs: LeaseAttrs::new(node, ip, backend),
    }
}

/// Observe, diff, apply with a fresh dataplane (as a freshly started agent does); the changes.
fn converge(ns: &Ns, plan: &NodePlan) -> Vec<routes::Change> {
    let mut dp = NetnsRoutes::open(Some(&ns.path())).unwrap();
    let changes = diff(&dp.observe().unwrap(), plan);
    dp.apply(&changes).unwrap();
    changes
}

fn observe(ns: &Ns) -> NodePlan {
    NetnsRoutes::open(Some(&ns.path()))
        .unwrap()
        .observe()
        .unwrap()
}

fn underlay(ns: &Ns) -> UnderlayInfo {
    NetnsRoutes::open(Some(&ns.path()))
        .unwrap()
        .underlay("eth0")
        .unwrap()
}

/// `(dst, gateway, dev, onlink)` of the routes with the agent's protocol, from `ip -j route`.
fn kernel_routes(ns: &Ns) -> Vec<(String, String, String, bool)> {
    let mut out: Vec<_> = ns
        .json(&["route", "show", "proto", "70"])
        .iter()
        .map(|r| {
            let flags = r["flags"].as_array().cloned().unwrap_or_default();
            (
                r["dst"].as_str().unwrap().to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap().to_string(),
                flags.iter().any(|f| f == "onlink"),
            )
        })
        .collect();
    out.sort();
    out
}

fn plan_routes(plan: &NodePlan) -> Vec<(String, String, String, bool)> {
    plan.routes
        .iter()
        .map(|r| {
            (
                r.dst.to_string(),
                r.via.to_string(),
                r.dev.clone(),
                r.onlink,
            )
        })
        .collect()
}

#[test]
fn host_gw_plan_is_exactly_what_the_kernel_holds_and_pods_reach_across() {
    let Some(n) = two_nodes(1) else { return };
    let (ua, ub) = (underlay(&n.a), underlay(&n.b));
    assert_eq!((ua.ip, ua.mtu), (Ipv4Addr::new(10, 99, 1, 1), 1500));
    let la = lease("10.244.1.0/24", "a", ua.ip, Backend::HostGw);
    let lb = lease("10.244.2.0/24", "b", ub.ip, Backend::HostGw);
    let pa = compile(&la, std::slice::from_ref(&lb), Backend::HostGw, &ua);
    let pb = compile(&lb, std::slice::from_ref(&la), Backend::HostGw, &ub);
    converge(&n.a, &pa);
    converge(&n.b, &pb);

    assert_eq!(
        kernel_routes(&n.a),
        vec![(
            "10.244.2.0/24".into(),
            "10.99.1.2".into(),
            "eth0".into(),
            false
        )]
    );
    assert_eq!(kernel_routes(&n.a), plan_routes(&pa));
    assert_eq!(observe(&n.a), pa, "read back exactly");
    assert_eq!(observe(&n.b), pb);
    assert!(
        converge(&n.a, &pa).is_empty(),
        "a second apply changes nothing"
    );

    let p1 = pod(&n.a, "10.244.1.5", "vpod1");
    let p2 = pod(&n.b, "10.244.2.5", "vpod2");
    assert!(
        p1.exec_ok(&["ping", "-c", "1", "-W", "2", "10.244.2.5"]),
        "pod on a reaches pod on b via host-gw"
    );

    // b leaves: its route goes, the pod /32 route (not ours) stays.
    converge(&n.a, &compile(&la, &[], Backend::HostGw, &ua));
    assert!(kernel_routes(&n.a).is_empty());
    assert!(n.a.ip(&["route", "show", "10.244.1.5"]).contains("vpod1"));
    drop((p1, p2));
}

/// The agent's items in `ns` as `ip`/`bridge` report them, as lines comparable with a plan.
fn kernel_vxlan_view(ns: &Ns) -> (Value, Vec<String>, Vec<String>, Vec<String>) {
    let link = ns.json(&["-d", "link", "show", VXLAN_DEVICE]).remove(0);
    let mut neigh: Vec<String> = ns
        .json(&["neigh", "show", "dev", VXLAN_DEVICE])
        .iter()
        .map(|n| {
            format!(
                "{} {} {}",
                n["dst"].as_str().unwrap(),
                n["lladdr"].as_str().unwrap(),
                n["state"][0].as_str().unwrap()
            )
        })
        .collect();
    neigh.sort();
    let mut fdb: Vec<String> = bridge_fdb(ns, VXLAN_DEVICE)
        .iter()
        .filter(|e| e.get("dst").is_some())
        .map(|e| {
            format!(
                "{} {}",
                e["mac"].as_str().unwrap(),
                e["dst"].as_str().unwrap()
            )
        })
        .collect();
    fdb.sort();
    let addrs: Vec<String> = ns.json(&["-4", "addr", "show", "dev", VXLAN_DEVICE])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (link, neigh, fdb, addrs)
}

/// `ip monitor` in a namespace while it runs; the lines that concern the agent's items.
struct Monitor {
    child: Child,
}

impl Monitor {
    fn start(ns: &Ns) -> Monitor {
        let child = Command::new("ip")
            .args([
                "-n", &ns.name, "monitor", "route", "neigh", "link", "address",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300)); // subscribed before anything happens
        Monitor { child }
    }

    fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.child.wait();
        // IPv6 link-local autoconfiguration of a new device finishes on its own time.
        out.lines()
            .filter(|l| l.contains(VXLAN_DEVICE) || l.contains("10.244.") || l.contains("proto 70"))
            .filter(|l| !l.contains("fe80::"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Echoes bytes over one TCP connection between two pods every 10 ms until stopped; counts
/// round trips and failures (a 300 ms stall counts as a failure).
struct Echo {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(client: &Ns, server: &Ns, server_ip: &str) -> Echo {
        let addr: std::net::SocketAddr = format!("{server_ip}:7077").parse().unwrap();
        let listener = server.run(|| TcpListener::bind(addr)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let server_thread = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut stream = client
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let (stop2, ok2, failures2) = (stop.clone(), ok.clone(), failures.clone());
        let client_thread = std::thread::spawn(move || {
            let mut i: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let msg = i.to_be_bytes();
                let mut back = [0u8; 8];
                match stream
                    .write_all(&msg)
                    .and_then(|()| stream.read_exact(&mut back))
                {
                    Ok(()) if back == msg => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => failures2
                        .lock()
                        .unwrap()
                        .push(format!("round trip {i}: wrong echo")),
                    Err(e) => {
                        failures2
                            .lock()
                            .unwrap()
                            .push(format!("round trip {i}: {e}"));
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Echo {
            stop,
            ok,
            failures,
            threads: vec![client_thread, server_thread],
        }
    }

    fn round_trips(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let client = self.threads.remove(0);
        client.join().unwrap();
        // The server thread ends when the client's stream closes (dropped with its thread).
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.failures.lock().unwrap().clone()
    }
}

#[test]
fn vxlan_plan_is_what_the_kernel_holds_and_a_restart_removes_only_stale_entries() {
    let Some(n) = two_nodes(2) else { return };
    let (ua, ub) = (underlay(&n.a), underlay(&n.b));
    let la = lease("10.244.1.0/24", "a", ua.ip, Backend::Vxlan);
    let lb = lease("10.244.2.0/24", "b", ub.ip, Backend::Vxlan);
    // A third node that will have left by the time a's agent restarts.
    let lc = lease(
        "10.244.3.0/24",
        "c",
        Ipv4Addr::new(10, 99, 2, 3),
        Backend::Vxlan,
    );
    let pa = compile(&la, &[lb.clone(), lc.clone()], Backend::Vxlan, &ua);
    let pb = compile(&lb, std::slice::from_ref(&la), Backend::Vxlan, &ub);
    converge(&n.a, &pa);
    converge(&n.b, &pb);

    // The kernel holds exactly the plan.
    assert_eq!(kernel_routes(&n.a), plan_routes(&pa));
    let (link, neigh, fdb, addrs) = kernel_vxlan_view(&n.a);
    let vx = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(
        (
            vx["id"].as_u64(),
            vx["port"].as_u64(),
            vx["learning"].as_bool()
        ),
        (Some(1), Some(8472), Some(false))
    );
    assert_eq!(vx["local"], "10.99.2.1");
    assert_eq!(vx["link"], "eth0");
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], "0a:46:0a:63:02:01");
    assert_eq!(addrs, vec!["10.244.1.0/32"]);
    assert_eq!(
        neigh,
        vec![
            "10.244.2.0 0a:46:0a:63:02:02 PERMANENT",
            "10.244.3.0 0a:46:0a:63:02:03 PERMANENT"
        ]
    );
    assert_eq!(
        fdb,
        vec!["0a:46:0a:63:02:02 10.99.2.2", "0a:46:0a:63:02:03 10.99.2.3"]
    );
    assert_eq!(observe(&n.a), pa, "read back exactly");

    // Pods behind both nodes talk across the VXLAN; also node to the remote device address.
    let p1 = pod(&n.a, "10.244.1.5", "vpod1");
    let p2 = pod(&n.b, "10.244.2.5", "vpod2");
    assert!(
        n.a.exec_ok(&["ping", "-c", "1", "-W", "2", "10.244.2.0"]),
        "node a reaches b's vtep address"
    );
    assert!(
        p1.exec_ok(&["ping", "-c", "1", "-W", "2", "10.244.2.5"]),
        "pod to pod over vxlan"
    );
    let echo = Echo::start(&p1, &p2, "10.244.2.5");
    common::wait_sync("the echo runs", || echo.round_trips() > 10);

    // "Restart": a fresh dataplane, c has left. Only c's entries change.
    let monitor = Monitor::start(&n.a);
    let pa2 = compile(&la, std::slice::from_ref(&lb), Backend::Vxlan, &ua);
    let changes: Vec<String> = converge(&n.a, &pa2)
        .iter()
        .map(ToString::to_string)
        .collect();
    let events = monitor.stop();
    assert_eq!(
        changes,
        vec![
            "del route 10.244.3.0/24 via 10.244.3.0 dev flatnet.1 onlink proto 70",
            "del neigh 10.244.3.0 lladdr 0a:46:0a:63:02:03 dev flatnet.1 permanent",
            "del fdb 0a:46:0a:63:02:03 dev flatnet.1 dst 10.99.2.3",
        ]
    );
    assert!(!events.is_empty(), "ip monitor saw the removals");
    // Deleting a neighbour first marks it FAILED, then reports it deleted: any event, as long
    // as it is about c.
    for e in &events {
        assert!(
            e.contains("10.244.3.0") || e.contains("0a:46:0a:63:02:03"),
            "unexpected kernel event: {e}\nall: {events:#?}"
        );
    }
    assert_eq!(observe(&n.a), pa2);

    let before = echo.round_trips();
    common::wait_sync("the echo goes on after the restart", || {
        echo.round_trips() > before + 10
    });
    let failures = echo.finish();
    assert!(
        failures.is_empty(),
        "the pod-to-pod connection never stalled: {failures:?}"
    );

    // Drift is repaired: someone deletes the device; the next converge re-creates everything.
    n.a.ip(&["link", "del", VXLAN_DEVICE]);
    converge(&n.a, &pa2);
    assert_eq!(observe(&n.a), pa2);
    assert!(
        p1.exec_ok(&["ping", "-c", "1", "-W", "2", "10.244.2.5"]),
        "works again after the repair"
    );
}

#[test]
fn two_agents_with_etcd_converge_and_reach_each_other() {
    let Some(n) = two_nodes(3) else { return };
    let dir = TempDir::new("etcd");
    let Some(mut etcd) = testkit::start_etcd(dir.path()) else {
        return;
    };
    common::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let endpoints = vec![etcd.endpoint.clone()];
        let store = store::EtcdStore::connect(&endpoints, agent::DEFAULT_STORE_PREFIX)
            .await
            .unwrap();
        common::put_config(&store, "10.244.0.0/16", 24, "vxlan").await;
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for (node, ns) in [("node-a", &n.a), ("node-b", &n.b)] {
            let mut cfg = common::agent_config(node, dir.path(), Duration::from_secs(6));
            cfg.netns = Some(ns.path());
            cfg.etcd_endpoints = endpoints.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            tasks.push(tokio::spawn(agent::run(
                cfg,
                services::HealthConfig::default(),
                async {
                    let _ = rx.await;
                },
            )));
        }
        let start = std::time::Instant::now();
        let sa = common::wait_status(&store, "node-a", "healthy", |s| s.routes.healthy).await;
        let sb = common::wait_status(&store, "node-b", "healthy", |s| s.routes.healthy).await;
        assert_ne!(sa.routes.cidr, sb.routes.cidr);
        let (ca, cb) = (sa.routes.cidr.to_string(), sb.routes.cidr.to_string());
        let has = |ns: &Ns, cidr: &str| kernel_routes(ns).iter().any(|r| r.0 == cidr);
        common::wait_until("each node routes to the other", || {
            has(&n.a, &cb) && has(&n.b, &ca)
        })
        .await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "converged in {took:?}");
        let b_vtep = sb.routes.cidr.network().to_string();
        assert!(
            n.a.exec_ok(&["ping", "-c", "1", "-W", "2", &b_vtep]),
            "a reaches b's subnet over vxlan"
        );
        assert_eq!(
            (sa.routes.mtu, sa.routes.underlay_ip),
            (1450, Ipv4Addr::new(10, 99, 3, 1))
        );

        // An agent restart keeps its subnet and the peer's route untouched.
        let monitor = Monitor::start(&n.a);
        let _ = stops.remove(0).send(());
        tokio::time::timeout(common::WAIT, tasks.remove(0))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let stopped_at = store.revision().await.unwrap();
        let mut cfg = common::agent_config("node-a", dir.path(), Duration::from_secs(6));
        cfg.netns = Some(n.a.path());
        cfg.etcd_endpoints = endpoints.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.insert(0, tx);
        tasks.insert(
            0,
            tokio::spawn(agent::run(cfg, services::HealthConfig::default(), async {
                let _ = rx.await;
            })),
        );
        let sa2 = common::wait_status(&store, "node-a", "healthy after restart", |s| {
            s.routes.healthy && s.routes.applied_revision > stopped_at
        })
        .await;
        assert_eq!(sa2.routes.cidr, sa.routes.cidr);
        let events = tokio::task::spawn_blocking(move || monitor.stop())
            .await
            .unwrap();
        assert!(events.is_empty(), "a restart touches nothing: {events:#?}");

        // etcd goes away for a while: both dataplanes stay exactly as they are.
        let (routes_a, routes_b) = (kernel_routes(&n.a), kernel_routes(&n.b));
        let (client_port, peer_port) = (etcd.client_port(), etcd.peer_port());
        let monitor = Monitor::start(&n.a);
        etcd.stop();
        tokio::time::sleep(Duration::from_secs(5)).await; // two renewals fail
        assert_eq!(
            (kernel_routes(&n.a), kernel_routes(&n.b)),
            (routes_a, routes_b)
        );
        assert!(
            n.a.exec_ok(&["ping", "-c", "1", "-W", "2", &b_vtep]),
            "traffic flows without etcd"
        );
        etcd = store::EtcdProcess::start_on(dir.path(), client_port, peer_port).unwrap();
        let back_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for node in ["node-a", "node-b"] {
            common::wait_status(&store, node, "reporting again after the outage", |s| {
                s.routes.healthy && s.routes.heartbeat > back_at
            })
            .await;
        }
        let events = tokio::task::spawn_blocking(move || monitor.stop())
            .await
            .unwrap();
        assert!(
            events.is_empty(),
            "an etcd outage touches nothing: {events:#?}"
        );

        // b leaves for good: its lease is revoked, a drops its entries.
        let _ = stops.remove(1).send(());
        tokio::time::timeout(common::WAIT, tasks.remove(1))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let kv = store.get(&store::keys::subnet(&cb)).await.unwrap().unwrap();
        store.revoke_lease(kv.lease).await.unwrap();
        common::wait_until("a forgets b", || !has(&n.a, &cb)).await;
        assert!(n.a.json(&["neigh", "show", "dev", VXLAN_DEVICE]).is_empty());

        for tx in stops {
            let _ = tx.send(());
        }
        for t in tasks {
            tokio::time::timeout(common::WAIT, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    });
}

fn web_service(endpoints: &[&str]) -> (Vec<model::Service>, Vec<model::EndpointSlice>) {
    let svc = serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    let empty = serde_json::json!({"metadata": {"name": "empty", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.21", "selector": {"app": "none"},
                 "ports": [{"name": "http", "port": 80}]}});
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "a"}))
        .collect();
    let slice = serde_json::json!({"metadata": {"name": "web-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    (
        vec![
            serde_json::from_value(svc).unwrap(),
            serde_json::from_value(empty).unwrap(),
        ],
        vec![serde_json::from_value(slice).unwrap()],
    )
}

#[test]
fn service_maps_dnat_real_connections_and_survive_a_restart() {
    use services::{Applier, Compiler, NodeView};
    let feed = |c: &mut Compiler,
                (svcs, slices): (Vec<model::Service>, Vec<model::EndpointSlice>)| {
        svcs.iter().for_each(|s| c.upsert_service(s));
        slices.iter().for_each(|s| c.upsert_slice(s));
    };
    let Some(nodes) = two_nodes(71) else { return };
    let node = &nodes.a;
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    let client = pod(node, "10.244.0.5", "vc");
    let s1 = pod(node, "10.244.0.6", "vs1");
    let s2 = pod(node, "10.244.0.7", "vs2");
    let stops = [name_server(&s1, 8080, "s1"), name_server(&s2, 8080, "s2")];
    let view = NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 71, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    };
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    let mut applier = Applier::default();
    let mut c = Compiler::new(view.clone());
    feed(&mut c, web_service(&["10.244.0.6", "10.244.0.7"]));
    applier.apply(&mut dp, &mut c).unwrap();

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(ask(&client, "10.96.0.20:80").unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["s1", "s2"]);
    assert_eq!(
        ask(&client, "10.96.0.21:80"),
        Err(std::io::ErrorKind::ConnectionRefused),
        "no endpoints: refused at once"
    );
    assert_eq!(
        ask(&client, "10.96.0.20:81"),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a port the service lacks: refused"
    );

    // A restarted agent (a new Applier, the table still there) reloads without error, and a
    // change afterwards touches only its elements.
    let mut applier = Applier::default();
    let mut c = Compiler::new(view.clone());
    feed(&mut c, web_service(&["10.244.0.7"]));
    applier.apply(&mut dp, &mut c).unwrap();
    for _ in 0..10 {
        assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s2");
    }
    feed(&mut c, web_service(&["10.244.0.6"]));
    applier.apply(&mut dp, &mut c).unwrap();
    for _ in 0..10 {
        assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s1");
    }
    let listed = Command::new("nsenter")
        .args([
            &format!("--net={}", node.path().display()),
            "nft",
            "-j",
            "list",
            "map",
            "inet",
            "flatnet",
            "backends",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("10.244.0.6") && !text.contains("10.244.0.7"),
        "{text}"
    );
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
}

/// `GET path` from `ns` to `addr`; (status, headers and body as text), or the error kind.
fn http_get(ns: &Ns, addr: &str, path: &str) -> Result<(u16, String), std::io::ErrorKind> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .map_err(|e| e.kind())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after 5 s.
fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn lb_local_service(
    health_port: u16,
    endpoints: &[(&str, bool)],
) -> (model::Service, model::EndpointSlice) {
    let svc = serde_json::json!({"metadata": {"name": "shop", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "selector": {"app": "shop"},
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": health_port,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}});
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| {
            serde_json::json!({"addresses": [ip], "nodeName": "a",
            "conditions": {"ready": ready, "serving": true, "terminating": !ready}})
        })
        .collect();
    let slice = serde_json::json!({"metadata": {"name": "shop-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "shop"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    (
        serde_json::from_value(svc).unwrap(),
        serde_json::from_value(slice).unwrap(),
    )
}

/// The health servers in a node namespace, probed from the other node over the underlay with
/// the service table loaded (nothing in it intercepts the ports): the health-check node port
/// answers 200 with the local endpoint count, 503 once the node's last endpoint terminates,
/// closes when the service goes; `/healthz` answers 200 while synced and 503 when an update
/// waits too long.
#[test]
fn health_ports_answer_over_real_sockets() {
    use services::{Applier, Compiler, NodeView};
    use services::{HealthConfig, ProxyHealth};
    let Some(nodes) = two_nodes(72) else { return };
    let (node, probe) = (&nodes.a, &nodes.b);
    let view = NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 72, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    };
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    let mut applier = Applier::default();
    let mut c = Compiler::new(view);
    let health = ProxyHealth::default();
    let mut sync =
        |c: &mut Compiler, svc: Option<&model::Service>, slice: &model::EndpointSlice| {
            match svc {
                Some(s) => c.upsert_service(s),
                None => c.remove_service("default", "shop"),
            }
            c.upsert_slice(slice);
            health.queued();
            applier.apply(&mut dp, c).unwrap();
            health.set_services(&c.plan().health_checks);
            health.updated();
        };
    let (svc, slice) = lb_local_service(32100, &[("10.244.0.6", true), ("10.244.0.7", true)]);
    sync(&mut c, Some(&svc), &slice);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = HealthConfig {
        healthz_bind: Some("0.0.0.0:10256".parse().unwrap()),
        node_ports: true,
        timeout: Duration::from_millis(300),
    };
    let server = rt.spawn(services::health_server::serve(
        cfg,
        Some(node.path()),
        health.clone(),
    ));

    let port = "10.99.72.1:32100";
    within(
        "the health check node port to open",
        Duration::from_secs(5),
        || http_get(probe, port, "/").is_ok(),
    );
    let (status, text) = http_get(probe, port, "/").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\r\nContent-Type: application/json\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nX-Load-Balancing-Endpoint-Weight: 2\r\n"),
        "{text}"
    );
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"service": {"namespace": "default", "name": "shop"},
            "localEndpoints": 2, "serviceProxyHealthy": true})
    );

    // Both local endpoints start terminating: the node fails the check at once.
    let (svc, slice) = lb_local_service(32100, &[("10.244.0.6", false), ("10.244.0.7", false)]);
    sync(&mut c, Some(&svc), &slice);
    let took = within(
        "503 after the last ready endpoint went",
        Duration::from_secs(1),
        || {
            http_get(probe, port, "/")
                .is_ok_and(|(s, t)| s == 503 && t.contains("\"localEndpoints\": 0"))
        },
    );
    eprintln!("health check followed the change in {took:?}");

    // The node health server: synced, then an update that waits longer than the timeout.
    let healthz = "10.99.72.1:10256";
    within("/healthz to open", Duration::from_secs(5), || {
        http_get(probe, healthz, "/healthz").is_ok()
    });
    let (status, text) = http_get(probe, healthz, "/healthz").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"nodeEligible\": true}"), "{text}");
    assert_eq!(http_get(probe, healthz, "/livez").unwrap().0, 200);
    assert_eq!(http_get(probe, healthz, "/other").unwrap().0, 404);
    health.queued();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(http_get(probe, healthz, "/healthz").unwrap().0, 503);
    assert_eq!(
        http_get(probe, port, "/").unwrap().0,
        503,
        "an unhealthy proxy fails every check"
    );
    health.updated();
    assert_eq!(http_get(probe, healthz, "/healthz").unwrap().0, 200);

    // The service goes: its port closes.
    sync(&mut c, None, &slice);
    within(
        "the health check node port to close",
        Duration::from_secs(1),
        || http_get(probe, port, "/") == Err(std::io::ErrorKind::ConnectionRefused),
    );
    server.abort();
    drop(rt);
}

/// Session affinity through a real kernel: a client that first reached endpoint E through the
/// ClusterIP gets E through the NodePort, and one that first came through the NodePort (the
/// masqueraded path) keeps its endpoint through the ClusterIP. The ruleset lists back as JSON
/// and as text that `nft` loads again.
#[test]
fn session_affinity_is_shared_by_the_cluster_ip_and_the_node_port() {
    use services::{Applier, Compiler, NodeView};
    let Some(nodes) = two_nodes(73) else { return };
    let (node, outside) = (&nodes.a, &nodes.b);
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    // The outside client reaches ClusterIPs through node a.
    outside.ip(&["route", "add", "10.96.0.0/16", "via", "10.99.73.1"]);
    outside.ip(&["route", "add", "10.244.0.0/16", "via", "10.99.73.1"]);
    let client = pod(node, "10.244.0.5", "vc");
    let s1 = pod(node, "10.244.0.6", "vs1");
    let s2 = pod(node, "10.244.0.7", "vs2");
    let stops = [name_server(&s1, 8080, "s1"), name_server(&s2, 8080, "s2")];
    let svc = serde_json::json!({"metadata": {"name": "sticky", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.30", "selector": {"app": "sticky"},
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}});
    let slice = serde_json::json!({"metadata": {"name": "sticky-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "sticky"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.6"], "nodeName": "a", "conditions": {"ready": true}},
                      {"addresses": ["10.244.0.7"], "nodeName": "a", "conditions": {"ready": true}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]});
    let mut c = Compiler::new(NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 73, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    });
    c.upsert_service(&serde_json::from_value(svc).unwrap());
    c.upsert_slice(&serde_json::from_value(slice).unwrap());
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    Applier::default().apply(&mut dp, &mut c).unwrap();

    let (cluster_ip, node_port) = ("10.96.0.30:80", "10.99.73.1:30080");
    // The outside client: ClusterIP first (kept address), then the NodePort (masqueraded).
    let outside_first = ask(outside, cluster_ip).unwrap();
    for _ in 0..12 {
        assert_eq!(
            ask(outside, node_port).unwrap(),
            outside_first,
            "NodePort after ClusterIP"
        );
        assert_eq!(ask(outside, cluster_ip).unwrap(), outside_first);
    }
    // The pod client: NodePort first (the record is written with the masquerade bit set on
    // the flow), then the ClusterIP.
    let first = ask(&client, node_port).unwrap();
    for _ in 0..12 {
        assert_eq!(
            ask(&client, cluster_ip).unwrap(),
            first,
            "ClusterIP after NodePort"
        );
        assert_eq!(ask(&client, node_port).unwrap(), first);
    }
    // One record per client, keyed by the bare affinity id.
    let nft = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg("nft")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let records = nft(&["list", "map", "inet", "flatnet", "affinity"]);
    assert_eq!(records.matches("10.99.73.2 . ").count(), 1, "{records}");
    assert_eq!(records.matches("10.244.0.5 . ").count(), 1, "{records}");
    let id = c.plan().affinity_ids.values().next().copied().unwrap();
    assert!(
        records.contains(&format!("{id:#010x}")),
        "{id:#x} in {records}"
    );
    // Lists back: JSON that parses, text that nft loads again (checked, not applied).
    let json: Value = serde_json::from_str(&nft(&["-j", "list", "ruleset"])).unwrap();
    assert!(json["nftables"].as_array().is_some_and(|a| !a.is_empty()));
    let dir = TempDir::new("affinity-ruleset");
    let file = dir.path().join("ruleset.nft");
    std::fs::write(&file, nft(&["list", "ruleset"])).unwrap();
    nft(&["-c", "-f", file.to_str().unwrap()]);
    // A restarted agent reloads over this table (reading its chains back) and the records
    // still hold.
    Applier::default().apply(&mut dp, &mut c).unwrap();
    assert_eq!(ask(outside, node_port).unwrap(), outside_first);
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
}

/// The whole agent (in-memory store and dataplane) with its health servers in a namespace of
/// its own: a LoadBalancer with externalTrafficPolicy Local put in the store opens its
/// health-check node port, a scale change shows in the answer within a second, `/healthz`
/// answers on the configured address, and deleting the service closes the port.
#[test]
fn the_agent_serves_health_ports_as_services_change() {
    use agent::MemDataplanes;
    use services::HealthConfig;
    use store::MemStore;
    let Some(ns) = netns::Ns::new("health") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new("agent-health");
    let store = MemStore::new();
    let put = |key: String, v: Value| {
        let store = store.clone();
        rt.block_on(async move { store.put(&key, serde_json::to_vec(&v).unwrap()).await })
            .unwrap();
    };
    rt.block_on(common::put_config(&store, "10.244.0.0/16", 24, "host-gw"));
    let svc = |etp: &str| {
        serde_json::json!({"metadata": {"name": "shop", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "selector": {"app": "shop"},
                 "externalTrafficPolicy": etp, "healthCheckNodePort": 32200,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}})
    };
    let slice = |ips: &[&str]| {
        let eps: Vec<Value> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}))
            .collect();
        serde_json::json!({"metadata": {"name": "shop-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "shop"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
    };
    put("objects/services/default/shop".into(), svc("Local"));
    put(
        "objects/endpointslices/default/shop-x".into(),
        slice(&["10.244.0.6", "10.244.0.7"]),
    );
    let dp = MemDataplanes::mem(UnderlayInfo {
        dev: "eth0".into(),
        ip: Ipv4Addr::new(10, 99, 0, 1),
        mtu: 1500,
    });
    let mut cfg = common::agent_config("n1", dir.path(), Duration::from_secs(3));
    cfg.netns = Some(ns.path());
    let health = HealthConfig {
        healthz_bind: Some("127.0.0.1:10266".parse().unwrap()),
        ..HealthConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(agent::run_with_health(
        store.clone(),
        dp,
        cfg,
        health,
        async {
            let _ = stopped.await;
        },
    ));
    let count = |want: &str| {
        http_get(&ns, "127.0.0.1:32200", "/healthz").is_ok_and(|(_, t)| t.contains(want))
    };
    within(
        "the port to answer 2 endpoints",
        Duration::from_secs(10),
        || count("\"localEndpoints\": 2"),
    );
    assert_eq!(http_get(&ns, "127.0.0.1:32200", "/").unwrap().0, 200);
    put(
        "objects/endpointslices/default/shop-x".into(),
        slice(&["10.244.0.6", "10.244.0.7", "10.244.0.8"]),
    );
    let took = within("the scale-up to show", Duration::from_secs(1), || {
        count("\"localEndpoints\": 3")
    });
    eprintln!("scale change answered after {took:?}");
    put("objects/endpointslices/default/shop-x".into(), slice(&[]));
    within("503 without endpoints", Duration::from_secs(1), || {
        http_get(&ns, "127.0.0.1:32200", "/").is_ok_and(|(s, _)| s == 503)
    });
    let (status, text) = http_get(&ns, "127.0.0.1:10266", "/healthz").unwrap();
    assert_eq!(status, 200, "{text}");
    // externalTrafficPolicy Cluster needs no health check: the port closes.
    put("objects/services/default/shop".into(), svc("Cluster"));
    within("the port to close", Duration::from_secs(1), || {
        http_get(&ns, "127.0.0.1:32200", "/") == Err(std::io::ErrorKind::ConnectionRefused)
    });
    let _ = stop.send(());
    rt.block_on(task).unwrap().unwrap();
}

/// A TCP server in `ns` on `port` that echoes what each connection sends until it closes.
fn echo_server(ns: &Ns, port: u16) -> Arc<AtomicBool> {
    let listener = ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 256];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    stop
}

/// kube-proxy's terminating-endpoint rules in a real kernel: a connection established to an
/// endpoint keeps working when the endpoint starts terminating and after it leaves the slice
/// (TCP flows are never flushed), while new connections go to the ready endpoint; with no
/// ready endpoint left, new connections use the serving terminating one.
#[test]
fn established_connections_survive_their_endpoint_terminating() {
    use services::{Applier, Compiler, NodeView};
    let Some(nodes) = two_nodes(74) else { return };
    let node = &nodes.a;
    assert!(node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    let client = pod(node, "10.244.0.5", "vc");
    let s1 = pod(node, "10.244.0.6", "vs1");
    let s2 = pod(node, "10.244.0.7", "vs2");
    let stops = [echo_server(&s1, 8080), name_server(&s2, 8080, "s2")];
    let svc: model::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    // (address, ready, serving, terminating)
    let slice = |eps: &[(&str, bool, bool, bool)]| -> model::EndpointSlice {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, r, s, t)| {
                serde_json::json!({"addresses": [ip], "nodeName": "a",
                "conditions": {"ready": r, "serving": s, "terminating": t}})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}))
        .unwrap()
    };
    let mut c = Compiler::new(NodeView {
        name: "a".into(),
        addresses: vec![Ipv4Addr::new(10, 99, 74, 1)],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/16".parse().unwrap()),
        nodes: vec!["a".into()],
    });
    let mut dp = services::NetnsProxy::open(Some(&node.path())).unwrap();
    let mut applier = Applier::default();
    c.upsert_service(&svc);
    c.upsert_slice(&slice(&[("10.244.0.6", true, true, false)]));
    applier.apply(&mut dp, &mut c).unwrap();

    let addr: std::net::SocketAddr = "10.96.0.20:80".parse().unwrap();
    let mut held = client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .unwrap();
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = |s: &mut TcpStream, msg: &str| {
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert_eq!(echo(&mut held, "one"), "one");

    // s1 terminates (still serving), s2 is ready: new flows go to s2, the held one goes on.
    c.upsert_slice(&slice(&[
        ("10.244.0.6", false, true, true),
        ("10.244.0.7", true, true, false),
    ]));
    applier.apply(&mut dp, &mut c).unwrap();
    for _ in 0..10 {
        assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s2");
    }
    assert_eq!(echo(&mut held, "two"), "two");
    // s1 leaves the slice: the held flow still goes on (TCP is never flushed).
    c.upsert_slice(&slice(&[("10.244.0.7", true, true, false)]));
    applier.apply(&mut dp, &mut c).unwrap();
    assert_eq!(echo(&mut held, "three"), "three");
    // Only a serving terminating endpoint left: new flows use it.
    c.upsert_slice(&slice(&[("10.244.0.7", false, true, true)]));
    applier.apply(&mut dp, &mut c).unwrap();
    assert_eq!(ask(&client, "10.96.0.20:80").unwrap(), "s2");
    // Not serving any more: refused.
    c.upsert_slice(&slice(&[("10.244.0.7", false, false, true)]));
    applier.apply(&mut dp, &mut c).unwrap();
    assert_eq!(
        ask(&client, "10.96.0.20:80"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    drop(held);
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
}
