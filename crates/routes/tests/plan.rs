//! Tier 0: compile() and diff() over plain values; golden files in `tests/golden/`
//! (`UPDATE_GOLDEN=1` rewrites them).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::Ipv4Addr;
use std::path::PathBuf;

use proptest::prelude::*;
use routes::plan::{
    Address, Backend, Change, FdbEntry, IP_FORWARD, Lease, LeaseAttrs, Mac, Neighbour, NodePlan,
    Route, UnderlayInfo, VXLAN_DEVICE, compile, diff, pod_mtu,
};
use routes::{Dataplane, MemRoutes};

fn lease(cidr: &str, node: &str, ip: [u8; 4], backend: Backend) -> Lease {
    Lease {
        cidr: cidr.parse().unwrap(),
        attrs: LeaseAttrs::new(node, Ipv4Addr::from(ip), backend),
    }
}

fn underlay() -> UnderlayInfo {
    UnderlayInfo {
        dev: "eth0".into(),
        ip: Ipv4Addr::new(10, 99, 0, 1),
        mtu: 1500,
    }
}

fn cluster(backend: Backend) -> (Lease, Vec<Lease>) {
    let local = lease("10.244.1.0/24", "n1", [10, 99, 0, 1], backend);
    let remotes = vec![
        lease("10.244.3.0/24", "n3", [10, 99, 0, 3], backend),
        lease("10.244.2.0/24", "n2", [10, 99, 0, 2], backend),
    ];
    (local, remotes)
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn host_gw_plan_has_one_route_per_remote_via_its_underlay_ip() {
    let (local, remotes) = cluster(Backend::HostGw);
    let plan = compile(&local, &remotes, Backend::HostGw, &underlay());
    let routes: Vec<Route> = plan.routes.iter().cloned().collect();
    assert_eq!(
        routes,
        vec![
            Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: Ipv4Addr::new(10, 99, 0, 2),
                dev: "eth0".into(),
                onlink: false
            },
            Route {
                dst: "10.244.3.0/24".parse().unwrap(),
                via: Ipv4Addr::new(10, 99, 0, 3),
                dev: "eth0".into(),
                onlink: false
            },
        ]
    );
    assert!(
        plan.vxlan.is_none()
            && plan.neighbours.is_empty()
            && plan.fdb.is_empty()
            && plan.addresses.is_empty()
    );
    assert_eq!(plan.sysctls.get(IP_FORWARD).map(String::as_str), Some("1"));
    golden("compile_host_gw.txt", &plan.to_string());
}

#[test]
fn vxlan_plan_has_device_and_route_neighbour_fdb_per_remote() {
    let (local, remotes) = cluster(Backend::Vxlan);
    let plan = compile(&local, &remotes, Backend::Vxlan, &underlay());
    let dev = plan.vxlan.clone().unwrap();
    assert_eq!(dev.name, VXLAN_DEVICE);
    assert_eq!(
        (dev.vni, dev.port, dev.learning, dev.mtu),
        (1, 8472, false, 1450)
    );
    assert_eq!(dev.local, Ipv4Addr::new(10, 99, 0, 1));
    assert_eq!(dev.mac.to_string(), "0a:46:0a:63:00:01");
    assert_eq!(
        plan.addresses.iter().cloned().collect::<Vec<_>>(),
        vec![Address {
            dev: VXLAN_DEVICE.into(),
            addr: "10.244.1.0/32".parse().unwrap()
        }]
    );
    let n2_mac: Mac = "0a:46:0a:63:00:02".parse().unwrap();
    assert!(plan.routes.contains(&Route {
        dst: "10.244.2.0/24".parse().unwrap(),
        via: Ipv4Addr::new(10, 244, 2, 0),
        dev: VXLAN_DEVICE.into(),
        onlink: true,
    }));
    assert!(plan.neighbours.contains(&Neighbour {
        dev: VXLAN_DEVICE.into(),
        ip: Ipv4Addr::new(10, 244, 2, 0),
        mac: n2_mac
    }));
    assert!(plan.fdb.contains(&FdbEntry {
        dev: VXLAN_DEVICE.into(),
        mac: n2_mac,
        dst: Ipv4Addr::new(10, 99, 0, 2)
    }));
    assert_eq!(
        (plan.routes.len(), plan.neighbours.len(), plan.fdb.len()),
        (2, 2, 2)
    );
    golden("compile_vxlan.txt", &plan.to_string());
}

#[test]
fn compile_leaves_out_own_overlapping_and_incomplete_remotes() {
    let (local, mut remotes) = cluster(Backend::Vxlan);
    remotes.push(lease(
        "10.244.1.0/24",
        "intruder",
        [10, 99, 0, 9],
        Backend::Vxlan,
    )); // our CIDR
    remotes.push(lease("10.244.7.0/24", "n1", [10, 99, 0, 1], Backend::Vxlan)); // ourselves
    remotes.push(lease(
        "10.244.0.0/23",
        "wide",
        [10, 99, 0, 8],
        Backend::Vxlan,
    )); // overlaps us
    remotes.push(lease(
        "10.244.3.128/25",
        "narrow",
        [10, 99, 0, 7],
        Backend::Vxlan,
    )); // inside n3: first wins
    let mut no_mac = lease("10.244.5.0/24", "n5", [10, 99, 0, 5], Backend::Vxlan);
    no_mac.attrs.vtep_mac = None;
    remotes.push(no_mac);
    let plan = compile(&local, &remotes, Backend::Vxlan, &underlay());
    let dsts: Vec<String> = plan.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, vec!["10.244.2.0/24", "10.244.3.0/24"]);
}

#[test]
fn mtu_subtracts_the_backend_overhead() {
    assert_eq!(pod_mtu(Backend::HostGw, 1500), 1500);
    assert_eq!(pod_mtu(Backend::Vxlan, 1500), 1450);
    assert_eq!(pod_mtu(Backend::Vxlan, 9000), 8950);
}

#[test]
fn lease_value_json_matches_the_store_layout() {
    let v = serde_json::to_value(LeaseAttrs::new(
        "n1",
        Ipv4Addr::new(10, 99, 0, 1),
        Backend::Vxlan,
    ))
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"node": "n1", "underlayIP": "10.99.0.1", "backend": "vxlan", "vtepMAC": "0a:46:0a:63:00:01", "vni": 1})
    );
    let v = serde_json::to_value(LeaseAttrs::new(
        "n2",
        Ipv4Addr::new(10, 99, 0, 2),
        Backend::HostGw,
    ))
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"node": "n2", "underlayIP": "10.99.0.2", "backend": "host-gw"})
    );
}

#[test]
fn diff_of_a_plan_with_itself_is_empty() {
    for backend in [Backend::HostGw, Backend::Vxlan] {
        let (local, remotes) = cluster(backend);
        let plan = compile(&local, &remotes, backend, &underlay());
        assert_eq!(diff(&plan, &plan), vec![]);
    }
}

#[test]
fn diff_from_nothing_adds_device_before_entries_and_routes_last() {
    let (local, remotes) = cluster(Backend::Vxlan);
    let plan = compile(&local, &remotes, Backend::Vxlan, &underlay());
    let changes = diff(&NodePlan::default(), &plan);
    let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
    golden("diff_vxlan_from_empty.txt", &(text.join("\n") + "\n"));
    let pos = |pred: fn(&Change) -> bool| changes.iter().position(pred).unwrap();
    assert!(pos(|c| matches!(c, Change::AddVxlan(_))) < pos(|c| matches!(c, Change::AddFdb(_))));
    assert!(
        pos(|c| matches!(c, Change::AddFdb(_))) < pos(|c| matches!(c, Change::AddNeighbour(_)))
    );
    assert!(
        pos(|c| matches!(c, Change::AddNeighbour(_))) < pos(|c| matches!(c, Change::AddRoute(_)))
    );
}

#[test]
fn diff_removes_a_departed_node_routes_first() {
    let (local, remotes) = cluster(Backend::Vxlan);
    let before = compile(&local, &remotes, Backend::Vxlan, &underlay());
    let after = compile(&local, &remotes[..1], Backend::Vxlan, &underlay()); // n2 left
    let changes = diff(&before, &after);
    let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "del route 10.244.2.0/24 via 10.244.2.0 dev flatnet.1 onlink proto 70",
            "del neigh 10.244.2.0 lladdr 0a:46:0a:63:00:02 dev flatnet.1 permanent",
            "del fdb 0a:46:0a:63:00:02 dev flatnet.1 dst 10.99.0.2",
        ]
    );
}

#[test]
fn diff_adds_a_new_node_without_touching_the_others() {
    let (local, remotes) = cluster(Backend::HostGw);
    let before = compile(&local, &remotes[..1], Backend::HostGw, &underlay());
    let after = compile(&local, &remotes, Backend::HostGw, &underlay());
    let text: Vec<String> = diff(&before, &after)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text,
        vec!["add route 10.244.2.0/24 via 10.99.0.2 dev eth0 proto 70"]
    );
}

#[test]
fn a_moved_node_is_one_replacing_add_not_a_delete() {
    let (local, mut remotes) = cluster(Backend::HostGw);
    let before = compile(&local, &remotes, Backend::HostGw, &underlay());
    remotes[1].attrs.underlay_ip = Ipv4Addr::new(10, 99, 0, 22);
    let after = compile(&local, &remotes, Backend::HostGw, &underlay());
    let text: Vec<String> = diff(&before, &after)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text,
        vec!["add route 10.244.2.0/24 via 10.99.0.22 dev eth0 proto 70"]
    );
}

#[test]
fn mtu_change_is_set_in_place_and_a_new_local_ip_recreates_the_device() {
    let (local, remotes) = cluster(Backend::Vxlan);
    let before = compile(&local, &remotes, Backend::Vxlan, &underlay());
    let jumbo = UnderlayInfo {
        mtu: 9000,
        ..underlay()
    };
    let changes = diff(&before, &compile(&local, &remotes, Backend::Vxlan, &jumbo));
    assert_eq!(
        changes,
        vec![Change::SetMtu {
            dev: VXLAN_DEVICE.into(),
            mtu: 8950
        }]
    );

    let moved = UnderlayInfo {
        ip: Ipv4Addr::new(10, 99, 0, 101),
        ..underlay()
    };
    let after = compile(&local, &remotes, Backend::Vxlan, &moved);
    let changes = diff(&before, &after);
    assert!(
        matches!(changes[0], Change::DelVxlan(_)) && matches!(changes[1], Change::AddVxlan(_)),
        "{changes:?}"
    );
    // Everything on the re-created device is added again, nothing deleted one by one.
    assert!(!changes.iter().any(|c| matches!(
        c,
        Change::DelRoute(_) | Change::DelNeighbour(_) | Change::DelFdb(_)
    )));
    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::AddRoute(_)))
            .count(),
        2
    );
}

#[test]
fn switching_backend_adds_host_routes_before_deleting_the_device() {
    let (local, remotes) = cluster(Backend::Vxlan);
    let vx = compile(&local, &remotes, Backend::Vxlan, &underlay());
    let hg = compile(&local, &remotes, Backend::HostGw, &underlay());
    let changes = diff(&vx, &hg);
    assert!(
        matches!(changes.last(), Some(Change::DelVxlan(_))),
        "{changes:?}"
    );
    assert_eq!(
        changes.len(),
        3,
        "two replacing routes and the device: {changes:?}"
    );
    let mut dp = MemRoutes::new(underlay());
    dp.state = vx;
    dp.apply(&changes).unwrap();
    assert_eq!(dp.state, hg);
}

fn arb_plan() -> impl Strategy<Value = NodePlan> {
    let remote = (1u8..40, 2u8..60, any::<bool>());
    (
        any::<bool>(),
        prop::sample::select(vec![1400u32, 1500, 9000]),
        prop::sample::select(vec![1u8, 101]),
        prop::collection::vec(remote, 0..8),
    )
        .prop_map(|(vxlan, mtu, ip, remotes)| {
            let backend = if vxlan {
                Backend::Vxlan
            } else {
                Backend::HostGw
            };
            let u = UnderlayInfo {
                dev: "eth0".into(),
                ip: Ipv4Addr::new(10, 99, 0, ip),
                mtu,
            };
            let local = Lease {
                cidr: "10.244.0.0/24".parse().unwrap(),
                attrs: LeaseAttrs::new("local", u.ip, backend),
            };
            let remotes: Vec<Lease> = remotes
                .into_iter()
                .map(|(third, host, wide)| {
                    let cidr = if wide {
                        format!("10.244.{}.0/23", third & !1)
                    } else {
                        format!("10.244.{third}.0/24")
                    };
                    lease(&cidr, &format!("n{third}"), [10, 99, 0, host], backend)
                })
                .collect();
            compile(&local, &remotes, backend, &u)
        })
}

proptest! {
    /// The diff is exactly what it takes: applied (with kernel semantics) to `old` it gives `new`.
    #[test]
    fn applying_the_diff_reaches_the_new_plan(old in arb_plan(), new in arb_plan()) {
        let mut dp = MemRoutes::new(UnderlayInfo { dev: "eth0".into(), ip: Ipv4Addr::new(10, 99, 0, 1), mtu: 1500 });
        dp.state = old.clone();
        let changes = diff(&old, &new);
        dp.apply(&changes).unwrap();
        prop_assert_eq!(&dp.state, &new);
        prop_assert_eq!(diff(&new, &new), vec![]);
    }
}
