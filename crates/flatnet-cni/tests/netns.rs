//! Tier-1 tests of the built `flatnet-cni` binary (design.md §9): every test makes its own
//! network namespaces (a node and its pods, named after the test and the pid), runs the plugin
//! inside the node namespace as a runtime would, and checks what the kernel holds (`ip -j`,
//! `tc -j`, `iptables-save`) and that packets flow. Needs root; skips with a notice when
//! namespaces cannot be made, and fails instead under `REQUIRE_NETNS=1`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    IFNAME, Lab, NETWORK, Out, PLUGIN_TIMEOUT, Pod, REFERENCE_DIR, result_ip, skip_or_fail,
    wait_until,
};

/// How long the detached child of DEL may take to remove the node end of the veth.
const LINK_GONE: Duration = Duration::from_secs(1);

fn assert_link_gone(lab: &Lab, pod: &Pod) {
    let name = pod.host_veth();
    assert!(
        wait_until(LINK_GONE, || !lab.node.has_link(&name)),
        "node-side {name} still present {LINK_GONE:?} after DEL: {:?}",
        lab.node.link_names()
    );
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

#[test]
fn add_wires_pod_with_32_and_default_route() {
    let Some(lab) = Lab::new("add_wires_pod") else {
        return;
    };
    let pod = lab.pod("p");
    let mut conf = lab.conf("1.1.0");
    conf["mtu"] = json!(1400);
    conf["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]});
    let result = lab.add(&pod, &conf);
    let ip = result_ip(&result);
    let host = pod.host_veth();

    // Kernel, pod side: eth0 up with exactly the /32, the MTU from the config, a default route
    // via the link-local gateway and a permanent neighbour for it.
    let eth0 = pod.ns.link(IFNAME).expect("eth0 in the pod");
    assert!(has_flag(&eth0, "UP"), "{eth0}");
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(eth0["linkinfo"]["info_kind"], "veth");
    assert_eq!(pod.ns.ipv4_addrs(IFNAME), vec![format!("{ip}/32")]);
    let routes = pod.ns.ip(&["-4", "route", "show"]);
    let routes = routes.as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == IFNAME),
        "no default via 169.254.1.1: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["dev"] == IFNAME && r["scope"] == "link"),
        "no link route to the gateway: {routes:?}"
    );
    let node_link = lab.node.link(&host).expect("node-side veth");
    let neigh = pod.ns.ip(&["neigh", "show", "dev", IFNAME]);
    let gw = neigh
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == "169.254.1.1")
        .expect("gateway neighbour");
    assert_eq!(
        gw["lladdr"], node_link["address"],
        "gateway resolves to the node end"
    );
    assert!(
        gw["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "PERMANENT"),
        "{gw}"
    );

    // Kernel, node side: the veth up with the MTU, a /32 scope-link route and a permanent
    // neighbour for the pod, forwarding on; nothing in the test's own namespace.
    assert!(has_flag(&node_link, "UP"), "{node_link}");
    assert_eq!(node_link["mtu"], 1400);
    assert_eq!(node_link["linkinfo"]["info_kind"], "veth");
    let nroutes = lab.node.ip(&["-4", "route", "show"]);
    let nroutes = nroutes.as_array().unwrap();
    assert!(
        nroutes
            .iter()
            .any(|r| r["dst"] == ip.as_str() && r["dev"] == host.as_str() && r["scope"] == "link"),
        "no {ip}/32 dev {host} route on the node: {nroutes:?}"
    );
    let nneigh = lab.node.ip(&["neigh", "show", "dev", &host]);
    let pn = nneigh
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == ip.as_str())
        .expect("pod neighbour on the node");
    assert_eq!(pn["lladdr"], eth0["address"]);
    assert!(
        pn["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "PERMANENT"),
        "{pn}"
    );
    assert_eq!(lab.node.sysctl("net/ipv4/ip_forward"), "1");
    let own = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&own.stdout).contains(&host),
        "{host} leaked into the test's namespace"
    );

    // Result: the version asked for, node end then pod end, the /32 on the pod end, the
    // default route, dns copied from the config; macs and MTU match the kernel.
    assert_eq!(result["cniVersion"], "1.1.0");
    let ifs = result["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{result}");
    assert_eq!(ifs[0]["name"], host.as_str());
    assert_eq!(ifs[0]["mac"], node_link["address"]);
    assert!(
        ifs[0].get("sandbox").is_none_or(|s| s == ""),
        "node end has no sandbox: {}",
        ifs[0]
    );
    assert_eq!(ifs[1]["name"], IFNAME);
    assert_eq!(ifs[1]["mac"], eth0["address"]);
    assert_eq!(ifs[1]["sandbox"], pod.path().as_str());
    assert_eq!(ifs[0]["mtu"], 1400);
    assert_eq!(ifs[1]["mtu"], 1400);
    assert_eq!(
        result["ips"],
        json!([{"address": format!("{ip}/32"), "gateway": "169.254.1.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_eq!(result["dns"]["nameservers"], json!(["10.96.0.10"]));
    assert_eq!(
        result["dns"]["search"],
        json!(["default.svc.cluster.local"])
    );
    let sub: ipnet::Ipv4Net = support::SUBNET.parse().unwrap();
    assert!(
        sub.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
        "{ip} outside {sub}"
    );

    // IPAM: one record, for this attachment.
    assert_eq!(
        lab.records(),
        vec![(ip.parse().unwrap(), pod.cid.clone(), IFNAME.to_string())]
    );
}

#[test]
fn two_pods_on_one_node_ping_each_other() {
    let Some(lab) = Lab::new("two_pods_ping") else {
        return;
    };
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    let conf = lab.conf("1.1.0");
    let ip_a = result_ip(&lab.add(&a, &conf));
    let ip_b = result_ip(&lab.add(&b, &conf));
    assert_ne!(ip_a, ip_b);
    assert!(a.ns.ping(&ip_b), "a -> b");
    assert!(b.ns.ping(&ip_a), "b -> a");

    // The node has no address of its own yet; with one it reaches its pods, and they it.
    lab.node
        .ip_do(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    lab.node.ip_do(&["link", "set", "lo", "up"]);
    assert!(lab.node.ping(&ip_a), "node -> a");
    assert!(lab.node.ping(&ip_b), "node -> b");
    assert!(a.ns.ping("10.99.0.1"), "a -> node");
}

#[test]
fn check_passes_after_add_and_fails_after_route_removed() {
    let Some(lab) = Lab::new("check_route") else {
        return;
    };
    let pod = lab.pod("p");
    let conf = lab.conf("1.1.0");
    let result = lab.add(&pod, &conf);
    let ip = result_ip(&result);
    let host = pod.host_veth();
    let with_prev = Lab::with_prev(&conf, &result);

    let out = lab.cni("CHECK", &pod, &with_prev);
    out.ok();
    assert_eq!(out.stdout, "", "CHECK prints nothing on success");

    lab.node
        .ip_do(&["route", "del", &format!("{ip}/32"), "dev", &host]);
    let e = lab.cni("CHECK", &pod, &with_prev).cni_error(999);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{ip}/32")) && msg.contains(&host),
        "message names the route: {msg}"
    );

    // Put it back: CHECK passes again; take the pod's address away: CHECK names it.
    lab.node.ip_do(&[
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        &host,
        "scope",
        "link",
    ]);
    lab.cni("CHECK", &pod, &with_prev).ok();
    pod.ns
        .ip_do(&["addr", "del", &format!("{ip}/32"), "dev", IFNAME]);
    let e = lab.cni("CHECK", &pod, &with_prev).cni_error(999);
    assert!(
        e["msg"].as_str().unwrap().contains(&format!("{ip}/32")),
        "{e}"
    );
}

#[test]
fn del_is_idempotent_without_netns() {
    let Some(lab) = Lab::new("del_idempotent") else {
        return;
    };
    let conf = lab.conf("1.1.0");

    // DEL twice, with the ADD result as prevResult as a runtime sends it.
    let twice = lab.pod("twice");
    let result = lab.add(&twice, &conf);
    let with_prev = Lab::with_prev(&conf, &result);
    lab.del(&twice, &with_prev);
    assert_eq!(lab.record_of(&twice), None, "IP released by the first DEL");
    lab.del(&twice, &with_prev);
    assert_link_gone(&lab, &twice);
    lab.del(&twice, &conf);

    // DEL with CNI_NETNS unset.
    let no_netns = lab.pod("nonetns");
    lab.add(&no_netns, &conf);
    let mut env = Lab::env("DEL", &no_netns);
    env.retain(|(k, _)| *k != "CNI_NETNS");
    let out = lab.run(&env, &conf);
    out.ok();
    assert_eq!(out.stdout, "");
    assert_eq!(lab.record_of(&no_netns), None);
    assert_link_gone(&lab, &no_netns);

    // DEL after the pod's namespace is gone (its path no longer exists).
    let mut gone = lab.pod("gone");
    lab.add(&gone, &conf);
    gone.ns.delete();
    assert!(!std::path::Path::new(&gone.path()).exists());
    lab.del(&gone, &conf);
    assert_eq!(lab.record_of(&gone), None);
    assert_link_gone(&lab, &gone);
    lab.del(&gone, &conf);

    // DEL of an attachment that never existed.
    let never = lab.pod("never");
    lab.del(&never, &conf);

    // With FLATNET_CNI_SYNC_DEL=1 the link is gone when DEL returns.
    let sync = lab.pod("sync");
    lab.add(&sync, &conf);
    let mut env = Lab::env("DEL", &sync);
    env.push(("FLATNET_CNI_SYNC_DEL", "1".into()));
    lab.run(&env, &conf).ok();
    assert!(
        !lab.node.has_link(&sync.host_veth()),
        "synchronous DEL left {}",
        sync.host_veth()
    );
    assert!(!sync.ns.has_link(IFNAME));

    assert_eq!(lab.records(), vec![], "every IP released");
    assert!(
        wait_until(LINK_GONE, || lab.node_veths().is_empty()),
        "{:?}",
        lab.node_veths()
    );
}

/// Links, addresses, routes and neighbours of a namespace, without counters or operstate.
fn snapshot(ns: &support::Ns) -> Value {
    let links: Vec<Value> = ns
        .ip(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            json!([
                l["ifindex"],
                l["ifname"],
                l["address"],
                l["mtu"],
                has_flag(l, "UP")
            ])
        })
        .collect();
    let addrs: Vec<Value> = ns
        .ip(&["-4", "addr", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            json!([
                l["ifname"],
                l["addr_info"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| json!([a["local"], a["prefixlen"]]))
                    .collect::<Vec<_>>()
            ])
        })
        .collect();
    json!({
        "links": links,
        "addrs": addrs,
        "routes": ns.ip(&["-4", "route", "show"]),
        "neigh": ns.ip(&["-4", "neigh", "show", "nud", "permanent"]),
    })
}

#[test]
fn add_twice_for_same_attachment_fails_and_changes_nothing() {
    let Some(lab) = Lab::new("add_twice") else {
        return;
    };
    let pod = lab.pod("p");
    let conf = lab.conf("1.1.0");
    let result = lab.add(&pod, &conf);
    let (node_before, pod_before, records_before) =
        (snapshot(&lab.node), snapshot(&pod.ns), lab.records());

    let e = lab.cni("ADD", &pod, &conf).cni_error(999);
    assert!(
        e["msg"].as_str().unwrap().contains(IFNAME),
        "names the interface: {e}"
    );

    assert_eq!(snapshot(&lab.node), node_before, "node namespace changed");
    assert_eq!(snapshot(&pod.ns), pod_before, "pod namespace changed");
    assert_eq!(lab.records(), records_before, "IPAM changed");
    lab.cni("CHECK", &pod, &Lab::with_prev(&conf, &result)).ok();

    // A second attachment into the same netns with the same ifname is refused too.
    let other = Pod {
        ns: support::Ns::create("fcni-add_twice-unused").unwrap(),
        cid: "other".into(),
    };
    let mut env = Lab::env("ADD", &other);
    env.retain(|(k, _)| *k != "CNI_NETNS");
    env.push(("CNI_NETNS", pod.path()));
    lab.run(&env, &conf).cni_error(999);
    assert_eq!(
        snapshot(&pod.ns),
        pod_before,
        "pod namespace changed by the other attachment"
    );
    assert_eq!(
        lab.records(),
        records_before,
        "IPAM changed by the other attachment"
    );
    assert!(!lab.node.has_link(&other.host_veth()));
}

#[test]
fn add_after_del_in_same_netns_succeeds_immediately() {
    let Some(lab) = Lab::new("add_after_del") else {
        return;
    };
    let pod = lab.pod("p");
    let conf = lab.conf("1.1.0");
    let mut result = lab.add(&pod, &conf);
    for round in 0..5 {
        let old_ip = result_ip(&result);
        lab.del(&pod, &Lab::with_prev(&conf, &result));
        // No wait: the node end may still be there, waiting for DEL's background removal.
        result = lab.add(&pod, &conf);
        let ip = result_ip(&result);
        // Past the background removal of the old pair, the new one must be whole.
        std::thread::sleep(Duration::from_millis(300));
        let host = pod.host_veth();
        assert!(
            lab.node.has_link(&host),
            "round {round}: node end {host} vanished after the re-ADD"
        );
        assert_eq!(
            pod.ns.ipv4_addrs(IFNAME),
            vec![format!("{ip}/32")],
            "round {round}"
        );
        let routes = lab.node.ip(&["-4", "route", "show"]);
        let dsts: Vec<&str> = routes
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["dst"].as_str())
            .collect();
        assert!(
            dsts.contains(&ip.as_str()),
            "round {round}: no route to {ip}: {dsts:?}"
        );
        if old_ip != ip {
            assert!(
                !dsts.contains(&old_ip.as_str()),
                "round {round}: stale route to {old_ip}"
            );
        }
        assert_eq!(lab.records().len(), 1, "round {round}");
        lab.cni("CHECK", &pod, &Lab::with_prev(&conf, &result)).ok();
    }
}

/// `n` busy-looping processes, killed on drop: CPU pressure for the race below.
struct Hogs(Vec<std::process::Child>);

impl Hogs {
    fn start(n: usize) -> Hogs {
        Hogs(
            (0..n)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The same DEL-then-ADD as above, with DEL's detached child starved of CPU (the DEL runs
/// under `chrt --idle 0` while every core is busy) and a runtime that waits for the plugin's
/// exit but not for EOF on its stdout (libcni waits for EOF, which happens to close most of
/// the window: the child lets go of stdout just before it sends its delete). The child once
/// deleted, by name, the pair the re-ADD had just made; it now deletes by index.
#[test]
fn add_right_after_del_keeps_its_interfaces_when_the_del_child_is_slow() {
    let Some(lab) = Lab::new("del_child_race") else {
        return;
    };
    let pod = lab.pod("p");
    let conf = lab.conf("1.1.0");
    lab.add(&pod, &conf);
    let _hogs = Hogs::start(4);
    let mut lost = Vec::new();
    for round in 0..20 {
        let mut del = lab.node_command(
            &["chrt", "--idle", "0"],
            support::BIN,
            &Lab::env("DEL", &pod),
        );
        del.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = del.spawn().unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            conf.to_string().as_bytes(),
        )
        .unwrap();
        assert!(child.wait().unwrap().success(), "round {round}: DEL failed");
        let result = lab.add(&pod, &conf);
        std::thread::sleep(Duration::from_millis(300));
        if !lab.node.has_link(&pod.host_veth()) || !pod.ns.has_link(IFNAME) {
            lost.push(round);
            // The ADD's IP is still recorded; clean up for the next round.
            let mut env = Lab::env("DEL", &pod);
            env.push(("FLATNET_CNI_SYNC_DEL", "1".into()));
            lab.run(&env, &conf).ok();
            lab.add(&pod, &conf);
        } else {
            lab.cni("CHECK", &pod, &Lab::with_prev(&conf, &result)).ok();
        }
    }
    assert!(
        lost.is_empty(),
        "re-ADDed interfaces vanished in rounds {lost:?} of 20"
    );
}

#[test]
fn gc_releases_leaked_ips_with_both_attachment_keys() {
    let Some(lab) = Lab::new("gc_both_keys") else {
        return;
    };
    let conf = lab.conf("1.1.0");
    let (keep, leak1, leak2) = (lab.pod("keep"), lab.pod("leak1"), lab.pod("leak2"));
    let kept = lab.add(&keep, &conf);
    lab.add(&leak1, &conf);
    lab.add(&leak2, &conf);
    assert_eq!(lab.records().len(), 3);
    let gc_env = || {
        vec![
            ("CNI_COMMAND", "GC".to_string()),
            ("CNI_PATH", REFERENCE_DIR.to_string()),
        ]
    };
    let valid = json!([{"containerID": keep.cid, "ifname": IFNAME}]);

    // No list at all is not "nothing is valid": refused, nothing released.
    lab.run(&gc_env(), &conf).cni_error(7);
    assert_eq!(lab.records().len(), 3);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = valid.clone();
    let out = lab.run(&gc_env(), &gc);
    out.ok();
    assert_eq!(out.stdout, "", "GC prints nothing on success");
    let left: Vec<String> = lab.records().into_iter().map(|(_, c, _)| c).collect();
    assert_eq!(left, vec![keep.cid.clone()]);
    for p in [&leak1, &leak2] {
        assert!(
            !lab.node.has_link(&p.host_veth()),
            "GC left {}",
            p.host_veth()
        );
    }
    lab.cni("CHECK", &keep, &Lab::with_prev(&conf, &kept)).ok();

    // The legacy key libcni still sends alongside the new one.
    let leak3 = lab.pod("leak3");
    lab.add(&leak3, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = valid;
    lab.run(&gc_env(), &gc).ok();
    let left: Vec<String> = lab.records().into_iter().map(|(_, c, _)| c).collect();
    assert_eq!(left, vec![keep.cid.clone()]);
    assert!(!lab.node.has_link(&leak3.host_veth()));
    lab.cni("CHECK", &keep, &Lab::with_prev(&conf, &kept)).ok();
}

#[test]
fn fifty_concurrent_adds_get_distinct_ips() {
    let Some(lab) = Lab::new("fifty_concurrent") else {
        return;
    };
    let conf = lab.conf("1.1.0");
    let pods: Vec<Pod> = (0..50).map(|i| lab.pod(&format!("c{i}"))).collect();
    let stdin = conf.to_string();
    let running: Vec<_> = pods
        .iter()
        .map(|p| {
            lab.start_in_node(
                support::BIN,
                &Lab::env("ADD", p),
                stdin.as_bytes(),
                format!("ADD {}", p.cid),
            )
        })
        .collect();
    let outs: Vec<Out> = running
        .into_iter()
        .map(|r| r.wait(PLUGIN_TIMEOUT))
        .collect();
    let mut ips = BTreeSet::new();
    for (p, out) in pods.iter().zip(&outs) {
        out.ok();
        let ip = result_ip(&out.json());
        assert_eq!(
            pod_ip(p),
            Some(ip.clone()),
            "{} holds the IP its result names",
            p.cid
        );
        ips.insert(ip);
    }
    assert_eq!(ips.len(), 50, "distinct IPs");
    let records = lab.records();
    assert_eq!(records.len(), 50);
    let recorded: BTreeSet<String> = records.iter().map(|(ip, _, _)| ip.to_string()).collect();
    assert_eq!(recorded, ips, "records match the results");
    assert_eq!(lab.node_veths().len(), 50);

    let running: Vec<_> = pods
        .iter()
        .map(|p| {
            lab.start_in_node(
                support::BIN,
                &Lab::env("DEL", p),
                stdin.as_bytes(),
                format!("DEL {}", p.cid),
            )
        })
        .collect();
    for r in running {
        let out = r.wait(PLUGIN_TIMEOUT);
        out.ok();
    }
    assert_eq!(lab.records(), vec![], "no record after 50 DELs");
    assert!(
        wait_until(Duration::from_secs(10), || lab.node_veths().is_empty()),
        "left: {:?}",
        lab.node_veths()
    );
}

fn pod_ip(p: &Pod) -> Option<String> {
    let addrs = p.ns.ipv4_addrs(IFNAME);
    match addrs.as_slice() {
        [one] => one.strip_suffix("/32").map(str::to_string),
        _ => None,
    }
}

#[test]
fn every_version_add_result_shape() {
    let Some(lab) = Lab::new("every_version") else {
        return;
    };
    for v in cni::SUPPORTED_VERSIONS {
        let pod = lab.pod(&format!("v{}", v.replace('.', "")));
        let conf = lab.conf(v);
        let result = lab.add(&pod, &conf);
        assert_eq!(result["cniVersion"], *v);
        let legacy = v.starts_with("0.");
        let ip = &result["ips"][0];
        if legacy {
            assert_eq!(ip["version"], "4", "{v}: {result}");
        } else {
            assert!(ip.get("version").is_none(), "{v}: {result}");
        }
        assert_eq!(ip["address"], format!("{}/32", result_ip(&result)).as_str());
        assert_eq!(ip["interface"], 1, "{v}");
        let ifs = result["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2, "{v}");
        assert_eq!(ifs[1]["sandbox"], pod.path().as_str(), "{v}");
        // interfaces[].mtu is a 1.1.0 field.
        assert_eq!(
            ifs.iter().any(|i| i.get("mtu").is_some()),
            *v == "1.1.0",
            "{v}: {result}"
        );
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0", "{v}");

        let with_prev = Lab::with_prev(&conf, &result);
        if legacy && *v != "0.4.0" {
            lab.cni("CHECK", &pod, &with_prev).cni_error(1);
        } else {
            lab.cni("CHECK", &pod, &with_prev).ok();
        }
        lab.del(&pod, &with_prev);
        assert_eq!(lab.record_of(&pod), None, "{v}");
    }
}

#[test]
fn status_and_version_verbs() {
    let Some(lab) = Lab::new("status_version") else {
        return;
    };
    let version = |input: &str| {
        let env = vec![("CNI_COMMAND", "VERSION".to_string())];
        let out = lab
            .start_in_node(support::BIN, &env, input.as_bytes(), "VERSION".into())
            .wait(PLUGIN_TIMEOUT);
        out.ok();
        out.json()
    };
    let all = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    assert_eq!(
        version(r#"{"cniVersion":"1.1.0"}"#),
        json!({"cniVersion": "1.1.0", "supportedVersions": all})
    );
    assert_eq!(version(r#"{"cniVersion":"0.4.0"}"#)["cniVersion"], "0.4.0");
    assert_eq!(version("")["supportedVersions"], all);

    let status = |conf: &Value| lab.run(&[("CNI_COMMAND", "STATUS".to_string())], conf);
    let conf = lab.conf("1.1.0");
    let out = status(&conf);
    out.ok();
    assert_eq!(out.stdout, "", "STATUS prints nothing when ready");
    status(&lab.conf("1.0.0")).cni_error(1);

    // A /30 holds one pod address: once it is taken, STATUS says ADD cannot be served.
    let mut tiny = conf.clone();
    tiny["subnet"] = json!("10.244.9.0/30");
    let pod = lab.pod("p");
    lab.add(&pod, &tiny);
    status(&tiny).cni_error(50);
    lab.cni("ADD", &lab.pod("q"), &tiny).cni_error(999);
    lab.del(&pod, &tiny);
    status(&tiny).ok();

    // An unusable data directory (a file where the directory should be).
    let file = lab.data_dir.join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let mut broken = conf.clone();
    broken["dataDir"] = json!(file.to_str().unwrap());
    status(&broken).cni_error(50);
}

/// Runs a reference plugin (`/usr/lib/cni/<name>`) in the node namespace.
fn reference(lab: &Lab, name: &str, cmd: &str, pod: &Pod, conf: &Value) -> Out {
    let bin = format!("{REFERENCE_DIR}/{name}");
    lab.start_in_node(
        &bin,
        &Lab::env(cmd, pod),
        conf.to_string().as_bytes(),
        format!("{name} {cmd}"),
    )
    .wait(PLUGIN_TIMEOUT)
}

/// The request config a runtime derives for one plugin of a conflist (cni.md §1.3):
/// cniVersion and name inserted, runtimeConfig from the capabilities it declares,
/// `capabilities` removed, prevResult when there is one.
fn derive(list: &Value, plugin: &Value, runtime: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    if let Some(caps) = plugin["capabilities"].as_object() {
        let mut rc = serde_json::Map::new();
        for (cap, on) in caps {
            if on == true
                && let Some(v) = runtime.get(cap)
            {
                rc.insert(cap.clone(), v.clone());
            }
        }
        c["runtimeConfig"] = Value::Object(rc);
    }
    c.as_object_mut().unwrap().remove("capabilities");
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

#[test]
fn chained_with_reference_portmap_and_bandwidth() {
    const TEST: &str = "chained_portmap_bw";
    for p in ["portmap", "bandwidth"] {
        if !std::path::Path::new(&format!("{REFERENCE_DIR}/{p}")).exists() {
            skip_or_fail(
                TEST,
                &format!(
                    "reference plugin {REFERENCE_DIR}/{p} missing (Debian containernetworking-plugins)"
                ),
            );
            return;
        }
    }
    let Some(lab) = Lab::new(TEST) else { return };
    let pod = lab.pod("p");
    let mut ours = lab.conf("1.0.0");
    ours.as_object_mut().unwrap().remove("cniVersion");
    ours.as_object_mut().unwrap().remove("name");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            ours,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ],
    });
    let runtime = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 100_000, "egressRate": 2_000_000, "egressBurst": 200_000},
    });
    let plugins = list["plugins"].as_array().unwrap();
    let invoke = |i: usize, cmd: &str, conf: &Value| -> Out {
        match plugins[i]["type"].as_str().unwrap() {
            "flatnet-cni" => lab.cni(cmd, &pod, conf),
            other => reference(&lab, other, cmd, &pod, conf),
        }
    };

    // ADD in list order, each getting the previous result.
    let mut prev: Option<Value> = None;
    for (i, plugin) in plugins.iter().enumerate() {
        let conf = derive(&list, plugin, &runtime, prev.as_ref());
        let out = invoke(i, "ADD", &conf);
        out.ok();
        prev = Some(out.json());
    }
    let fin = prev.unwrap();
    let ip = result_ip(&fin);
    assert_eq!(
        lab.record_of(&pod).map(|a| a.to_string()),
        Some(ip.clone()),
        "final result carries our IP: {fin}"
    );
    let names: Vec<&str> = fin["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    let host = pod.host_veth();
    assert!(
        names.contains(&host.as_str()) && names.contains(&IFNAME),
        "our interfaces survive the chain: {names:?}"
    );

    // portmap's DNAT in the node namespace.
    let nat = || {
        String::from_utf8_lossy(&lab.node.exec(&["iptables-save", "-t", "nat"]).stdout).to_string()
    };
    let dnat = format!("--to-destination {ip}:80");
    let rules = nat();
    assert!(
        rules.contains(&dnat) && rules.contains("--dport 18080"),
        "no DNAT 18080 -> {ip}:80:\n{rules}"
    );
    // bandwidth's shaping: tbf on the node-side veth (ingress to the pod) and an ingress qdisc
    // redirecting to an ifb device (egress from the pod).
    let qdiscs = lab.node.tc(&["qdisc", "show", "dev", &host]);
    let kinds: Vec<&str> = qdiscs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"tbf") && kinds.contains(&"ingress"),
        "qdiscs on {host}: {kinds:?}"
    );
    let ifbs: Vec<String> = lab
        .node
        .link_names()
        .into_iter()
        .filter(|n| n.starts_with("bwp"))
        .collect();
    assert_eq!(
        ifbs.len(),
        1,
        "bandwidth's ifb device: {:?}",
        lab.node.link_names()
    );

    // The runtime may CHECK with the final result; ours must accept what the chain made.
    lab.cni(
        "CHECK",
        &pod,
        &derive(&list, &plugins[0], &runtime, Some(&fin)),
    )
    .ok();

    // DEL in reverse order, each with the final result.
    for i in (0..plugins.len()).rev() {
        let conf = derive(&list, &plugins[i], &runtime, Some(&fin));
        invoke(i, "DEL", &conf).ok();
    }
    assert!(!nat().contains(&dnat), "DNAT left after DEL:\n{}", nat());
    assert!(
        !lab.node.link_names().iter().any(|n| n.starts_with("bwp")),
        "ifb left: {:?}",
        lab.node.link_names()
    );
    assert_link_gone(&lab, &pod);
    assert_eq!(lab.record_of(&pod), None);
    assert!(!pod.ns.has_link(IFNAME));
}

/// One malformed invocation and the CNI error code it must get.
struct BadCase<'a> {
    what: &'static str,
    env: &'a [(&'static str, String)],
    stdin: Vec<u8>,
    code: u64,
    /// Text the error's msg or details must hold.
    mentions: &'static str,
}

#[test]
fn bad_input_changes_nothing() {
    let Some(lab) = Lab::new("bad_input") else {
        return;
    };
    let pod = lab.pod("p");
    let conf = lab.conf("1.1.0");
    let mut no_subnet = conf.clone();
    no_subnet.as_object_mut().unwrap().remove("subnet");
    let mut bad_version = conf.clone();
    bad_version["cniVersion"] = json!("9.9.9");
    let mut no_netns = Lab::env("ADD", &pod);
    no_netns.retain(|(k, _)| *k != "CNI_NETNS");

    let ok_env = Lab::env("ADD", &pod);
    let bare_env = vec![("CNI_COMMAND", "ADD".to_string())];
    let cases = [
        BadCase {
            what: "malformed JSON",
            env: &ok_env,
            stdin: br#"{"cniVersion":"1.1.0","name""#.to_vec(),
            code: 6,
            mentions: "",
        },
        BadCase {
            what: "missing subnet",
            env: &ok_env,
            stdin: no_subnet.to_string().into_bytes(),
            code: 7,
            mentions: "subnet",
        },
        BadCase {
            what: "unsupported version",
            env: &ok_env,
            stdin: bad_version.to_string().into_bytes(),
            code: 1,
            mentions: "9.9.9",
        },
        BadCase {
            what: "missing CNI_NETNS",
            env: &no_netns,
            stdin: conf.to_string().into_bytes(),
            code: 4,
            mentions: "CNI_NETNS",
        },
        BadCase {
            what: "only CNI_COMMAND",
            env: &bare_env,
            stdin: conf.to_string().into_bytes(),
            code: 4,
            mentions: "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME",
        },
    ];
    for BadCase {
        what,
        env,
        stdin,
        code,
        mentions: needle,
    } in cases
    {
        let out = lab
            .start_in_node(support::BIN, env, &stdin, what.into())
            .wait(PLUGIN_TIMEOUT);
        let e = out.cni_error(code);
        let text = format!("{} {}", e["msg"], e["details"]);
        assert!(
            text.contains(needle),
            "{what}: error should mention {needle:?}: {e}"
        );
        assert_eq!(lab.records(), vec![], "{what}: IPAM record created");
        assert_eq!(lab.node.link_names(), vec!["lo"], "{what}: node links");
        assert_eq!(pod.ns.link_names(), vec!["lo"], "{what}: pod links");
    }
}
