//! Tier 1: `inspect::connectivity::probe` with real packets between pod namespaces wired like
//! flatnet-cni wires them (a node namespace, /32 routes, link-local gateway), without a lab:
//! connected, refused, silently dropped, UDP with and without a listener, the diagonal, and
//! an unsupported protocol. Needs root; skips with a notice, fails under `REQUIRE_NETNS=1`.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inspect::connectivity::{ConnectivityError, Member, Outcome, check_supported, probe, to_cells};
use netpol::Protocol;
use testkit::{TestNs, name_server, pod};

/// A UDP server in `ns` on `port` answering every datagram with `name`.
fn udp_server(ns: &TestNs, port: u16, name: &'static str) -> Arc<AtomicBool> {
    let sock = ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(name.as_bytes(), peer);
            }
        }
    });
    stop
}

fn member(name: &str, ip: &str) -> Member {
    Member {
        namespace: "t".into(),
        name: name.into(),
        ip: ip.parse().unwrap(),
        ready: true,
        ports: vec![],
    }
}

struct Setup {
    _node: TestNs,
    pods: Vec<TestNs>,
    members: Vec<Member>,
    stops: Vec<Arc<AtomicBool>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for s in &self.stops {
            s.store(true, Ordering::Relaxed);
        }
    }
}

/// Three pods behind one node: `a` (10.98.0.2, nothing listens), `b` (10.98.0.3, TCP and UDP
/// on 80 answering "b"), `c` (10.98.0.4, TCP 80, but the node blackholes its address, so
/// packets to it vanish without an answer).
fn setup() -> Option<Setup> {
    let node = TestNs::new("flp-node")?;
    assert!(
        node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        "enable forwarding in the node namespace"
    );
    let ips = ["10.98.0.2", "10.98.0.3", "10.98.0.4"];
    let pods: Vec<TestNs> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| pod(&node, ip, &format!("veth{i}")))
        .collect();
    let stops = vec![
        name_server(&pods[1], 80, "b"),
        udp_server(&pods[1], 80, "b"),
        name_server(&pods[2], 80, "c"),
    ];
    node.ip(&["route", "replace", "blackhole", "10.98.0.4/32"]);
    let members = ["a", "b", "c"]
        .iter()
        .zip(ips)
        .map(|(n, ip)| member(n, ip))
        .collect();
    Some(Setup {
        _node: node,
        pods,
        members,
        stops,
    })
}

fn run(s: &Setup, protocol: Protocol, port: u16) -> Result<Vec<Vec<Outcome>>, ConnectivityError> {
    let paths: Vec<PathBuf> = s.pods.iter().map(TestNs::path).collect();
    let members = s.members.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let out = rt.block_on(probe(
        &members,
        &|m| {
            let i = members.iter().position(|x| x == m).unwrap();
            paths[i].clone()
        },
        port,
        protocol,
        Duration::from_secs(1),
    ));
    eprintln!(
        "{protocol}/{port}: {} probes in {:?}",
        members.len() * members.len(),
        t.elapsed()
    );
    out
}

#[test]
fn tcp_probes_tell_connected_refused_and_dropped_apart() {
    let Some(s) = setup() else { return };
    let o = run(&s, Protocol::Tcp, 80).unwrap();
    // rows: from a, b, c; columns: to a, b, c
    assert_eq!(o[0][0], Outcome::Refused, "a has no listener: {o:?}");
    assert_eq!(o[0][1], Outcome::Connected, "{o:?}");
    assert_eq!(o[1][1], Outcome::Connected, "b reaches itself: {o:?}");
    assert_eq!(o[1][0], Outcome::Refused, "{o:?}");
    assert_eq!(o[0][2], Outcome::TimedOut, "c is blackholed: {o:?}");
    assert_eq!(o[1][2], Outcome::TimedOut, "{o:?}");
    assert_eq!(
        o[2][1],
        Outcome::TimedOut,
        "b's answer to c is blackholed: {o:?}"
    );
    assert_eq!(
        o[2][2],
        Outcome::Connected,
        "c reaches itself inside its namespace: {o:?}"
    );
    assert_eq!(
        to_cells(&o),
        vec![vec![0, 1, 0], vec![0, 1, 0], vec![0, 0, 1]]
    );
}

#[test]
fn udp_counts_only_a_reply() {
    let Some(s) = setup() else { return };
    let o = run(&s, Protocol::Udp, 80).unwrap();
    assert_eq!(o[0][1], Outcome::Connected, "b answers UDP: {o:?}");
    assert_eq!(o[1][1], Outcome::Connected, "{o:?}");
    assert_ne!(o[1][0], Outcome::Connected, "nothing listens on a: {o:?}");
    assert_ne!(o[0][2], Outcome::Connected, "c has no UDP server: {o:?}");
    assert_eq!(to_cells(&o)[0], vec![0, 1, 0]);
    // a port without any listener: never counted, whatever the path
    let o = run(&s, Protocol::Udp, 81).unwrap();
    assert!(to_cells(&o).iter().flatten().all(|&c| c == 0), "{o:?}");
}

#[test]
fn an_unsupported_protocol_is_an_error_naming_it() {
    let Some(s) = setup() else { return };
    let kernel_has_sctp = check_supported(Protocol::Sctp).is_ok();
    let direct = s.pods[0].run(|| {
        use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
        socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Sctp,
        )
        .is_ok()
    });
    assert_eq!(
        kernel_has_sctp, direct,
        "check_supported agrees with socket(2)"
    );
    match run(&s, Protocol::Sctp, 80) {
        Err(e @ ConnectivityError::Unsupported { .. }) => {
            assert!(!kernel_has_sctp);
            assert!(
                e.to_string()
                    .contains("SCTP is not supported by this kernel"),
                "{e}"
            );
        }
        Ok(o) => {
            assert!(kernel_has_sctp, "probed SCTP without kernel support: {o:?}");
            assert_ne!(o[0][1], Outcome::Connected, "nothing serves SCTP: {o:?}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}
