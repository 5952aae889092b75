//! Tier 1: the route plans (host-gw and VXLAN) against real kernels through
//! [`routes::NetnsRoutes`], each test in network namespaces of its own (two "nodes" joined by
//! a veth underlay, pods behind them), removed on every path. Needs root and `ip`; prints
//! SKIPPED otherwise, unless REQUIRE_NETNS=1 (then it fails). The whole agent is tested in
//! `agent/tests/netns.rs`.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routes::plan::{
    Backend, Lease, LeaseAttrs, NodePlan, ROUTE_PROTOCOL, UnderlayInfo, VXLAN_DEVICE, compile, diff,
};
use routes::{Dataplane, NetnsRoutes};
use serde_json::Value;
use testkit::{IpMonitor, TestNs, kernel_routes, pod, two_nodes, within};

/// Every wait in these tests ends by this.
const WAIT: Duration = Duration::from_secs(15);

/// What the `ip monitor` lines about flatnet's route items mention: the VXLAN device, the pod
/// network, the agent's route protocol.
const FLATNET_ITEMS: &[&str] = &[VXLAN_DEVICE, "10.244.", "proto 70"];

/// `bridge -j fdb show dev DEV` inside `ns`.
fn bridge_fdb(ns: &TestNs, dev: &str) -> Vec<Value> {
    let out = Command::new("bridge")
        .args(["-n", ns.name(), "-j", "fdb", "show", "dev", dev])
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
fn converge(ns: &TestNs, plan: &NodePlan) -> Vec<routes::Change> {
    let mut dp = NetnsRoutes::open(Some(&ns.path())).unwrap();
    let changes = diff(&dp.observe().unwrap(), plan);
    dp.apply(&changes).unwrap();
    changes
}

fn observe(ns: &TestNs) -> NodePlan {
    NetnsRoutes::open(Some(&ns.path()))
        .unwrap()
        .observe()
        .unwrap()
}

fn underlay(ns: &TestNs) -> UnderlayInfo {
    NetnsRoutes::open(Some(&ns.path()))
        .unwrap()
        .underlay("eth0")
        .unwrap()
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
        kernel_routes(&n.a, ROUTE_PROTOCOL),
        vec![(
            "10.244.2.0/24".into(),
            "10.99.1.2".into(),
            "eth0".into(),
            false
        )]
    );
    assert_eq!(kernel_routes(&n.a, ROUTE_PROTOCOL), plan_routes(&pa));
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
    assert!(kernel_routes(&n.a, ROUTE_PROTOCOL).is_empty());
    assert!(n.a.ip(&["route", "show", "10.244.1.5"]).contains("vpod1"));
    drop((p1, p2));
}

/// The agent's items in `ns` as `ip`/`bridge` report them, as lines comparable with a plan.
fn kernel_vxlan_view(ns: &TestNs) -> (Value, Vec<String>, Vec<String>, Vec<String>) {
    let link = ns.ip_json(&["-d", "link", "show", VXLAN_DEVICE]).remove(0);
    let mut neigh: Vec<String> = ns
        .ip_json(&["neigh", "show", "dev", VXLAN_DEVICE])
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
    let addrs: Vec<String> =
        ns.ip_json(&["-4", "addr", "show", "dev", VXLAN_DEVICE])[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
    (link, neigh, fdb, addrs)
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
    fn start(client: &TestNs, server: &TestNs, server_ip: &str) -> Echo {
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
    assert_eq!(kernel_routes(&n.a, ROUTE_PROTOCOL), plan_routes(&pa));
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
    within("the echo runs", WAIT, || echo.round_trips() > 10);

    // "Restart": a fresh dataplane, c has left. Only c's entries change.
    let monitor = IpMonitor::start(&n.a, FLATNET_ITEMS);
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
    within("the echo goes on after the restart", WAIT, || {
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
