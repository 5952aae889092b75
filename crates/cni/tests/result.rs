//! `CniResult` in each supported version's shape: golden JSON for one result, and reading
//! results back (cni.md §1.6).

#![allow(clippy::unwrap_used)] // tests may unwrap

use cni::{CniResult, Dns, Interface, IpConfig, Route, SUPPORTED_VERSIONS, code};
use serde_json::{Value, json};

/// A flatnet ADD result: host veth, pod eth0 with a /32 and a /128, routes via a link-local
/// gateway, cluster DNS. Every field is set so each version's shape shows what it drops.
fn sample() -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: "fn1a2b3c4d".into(),
                mac: Some("5e:ac:c0:5c:e4:c0".into()),
                mtu: Some(1450),
                sandbox: None,
            },
            Interface {
                name: "eth0".into(),
                mac: Some("de:90:ab:97:44:17".into()),
                mtu: Some(1450),
                sandbox: Some("/run/netns/pod1".into()),
            },
        ],
        ips: vec![
            IpConfig {
                address: "10.244.1.2/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            },
            IpConfig {
                address: "fd00:10:244:1::2/128".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            },
        ],
        routes: vec![
            Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                mtu: Some(1450),
                advmss: Some(1410),
                priority: Some(100),
                table: Some(254),
                scope: Some(0),
            },
            Route {
                dst: "169.254.1.1/32".parse().unwrap(),
                gw: None,
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: Some(253),
            },
        ],
        dns: Some(Dns {
            nameservers: vec!["10.96.0.10".into()],
            domain: None,
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
    }
}

/// `sample()` without what versions before 1.1.0 cannot carry.
fn sample_pre_1_1() -> CniResult {
    let mut r = sample();
    for i in &mut r.interfaces {
        i.mtu = None;
    }
    for rt in &mut r.routes {
        (rt.mtu, rt.advmss, rt.priority, rt.table, rt.scope) = (None, None, None, None, None);
    }
    r
}

fn dns_json() -> Value {
    json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local", "svc.cluster.local"], "options": ["ndots:5"]})
}

fn golden_legacy(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "fn1a2b3c4d", "mac": "5e:ac:c0:5c:e4:c0"},
            {"name": "eth0", "mac": "de:90:ab:97:44:17", "sandbox": "/run/netns/pod1"}
        ],
        "ips": [
            {"version": "4", "address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1},
            {"version": "6", "address": "fd00:10:244:1::2/128", "interface": 1}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
            {"dst": "169.254.1.1/32"}
        ],
        "dns": dns_json()
    })
}

fn golden_1_0_0() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "fn1a2b3c4d", "mac": "5e:ac:c0:5c:e4:c0"},
            {"name": "eth0", "mac": "de:90:ab:97:44:17", "sandbox": "/run/netns/pod1"}
        ],
        "ips": [
            {"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1},
            {"address": "fd00:10:244:1::2/128", "interface": 1}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
            {"dst": "169.254.1.1/32"}
        ],
        "dns": dns_json()
    })
}

fn golden_1_1_0() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "fn1a2b3c4d", "mac": "5e:ac:c0:5c:e4:c0", "mtu": 1450},
            {"name": "eth0", "mac": "de:90:ab:97:44:17", "mtu": 1450, "sandbox": "/run/netns/pod1"}
        ],
        "ips": [
            {"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1},
            {"address": "fd00:10:244:1::2/128", "interface": 1}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "169.254.1.1", "mtu": 1450, "advmss": 1410, "priority": 100, "table": 254, "scope": 0},
            {"dst": "169.254.1.1/32", "scope": 253}
        ],
        "dns": dns_json()
    })
}

/// Every supported version with its golden shape and what reading it back yields.
fn goldens() -> Vec<(&'static str, Value, CniResult)> {
    vec![
        ("0.3.0", golden_legacy("0.3.0"), sample_pre_1_1()),
        ("0.3.1", golden_legacy("0.3.1"), sample_pre_1_1()),
        ("0.4.0", golden_legacy("0.4.0"), sample_pre_1_1()),
        ("1.0.0", golden_1_0_0(), sample_pre_1_1()),
        ("1.1.0", golden_1_1_0(), sample()),
    ]
}

#[test]
fn goldens_cover_every_supported_version() {
    let versions: Vec<_> = goldens().iter().map(|(v, _, _)| *v).collect();
    assert_eq!(versions, SUPPORTED_VERSIONS);
}

#[test]
fn result_is_written_in_each_versions_shape() {
    for (version, golden, _) in goldens() {
        assert_eq!(sample().to_json(version), golden, "{version}");
    }
}

#[test]
fn result_of_each_version_reads_back() {
    for (version, golden, want) in goldens() {
        assert_eq!(CniResult::from_json(&golden).unwrap(), want, "{version}");
    }
}

#[test]
fn empty_result_is_just_the_version() {
    assert_eq!(
        CniResult::default().to_json("1.0.0"),
        json!({"cniVersion": "1.0.0"})
    );
    let empty_dns = CniResult {
        dns: Some(Dns::default()),
        ..CniResult::default()
    };
    assert_eq!(
        empty_dns.to_json("1.1.0"),
        json!({"cniVersion": "1.1.0", "dns": {}})
    );
}

#[test]
fn reference_bridge_result_reads() {
    // cni.md §2.1, the Debian bridge plugin's ADD output.
    let v = json!({"cniVersion":"1.0.0",
        "interfaces":[{"name":"rcni0","mac":"32:95:ca:b8:d0:b9"},
                      {"name":"veth6bf9ba54","mac":"5e:ac:c0:5c:e4:c0"},
                      {"name":"eth0","mac":"de:90:ab:97:44:17","sandbox":"/run/netns/pod1"}],
        "ips":[{"interface":2,"address":"10.244.1.2/24","gateway":"10.244.1.1"}],
        "routes":[{"dst":"0.0.0.0/0"}],
        "dns":{"nameservers":["10.96.0.10"],"search":["default.svc.cluster.local"]}});
    let r = CniResult::from_json(&v).unwrap();
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
    assert_eq!(r.ips[0].interface, Some(2));
    assert_eq!(r.to_json("1.0.0"), v);
}

#[test]
fn ipam_result_without_interfaces_reads() {
    // host-local alone: no interfaces, no index, an empty dns object.
    let v = json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.3/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
    let r = CniResult::from_json(&v).unwrap();
    assert!(r.interfaces.is_empty());
    assert_eq!(r.dns, Some(Dns::default()));
}

#[test]
fn result_keys_from_other_plugins_are_ignored() {
    let v = json!({"interfaces":[{"name":"net1","socketPath":"/run/vhost.sock","pciID":"0000:00:1f.6"}],"extra":true});
    let r = CniResult::from_json(&v).unwrap();
    assert_eq!(
        r.interfaces[0],
        Interface {
            name: "net1".into(),
            ..Interface::default()
        }
    );
}

#[test]
fn empty_strings_read_as_absent() {
    let v = json!({"interfaces":[{"name":"eth0","mac":"","sandbox":""}],"dns":{"domain":""}});
    let r = CniResult::from_json(&v).unwrap();
    assert_eq!(
        (
            r.interfaces[0].mac.as_ref(),
            r.interfaces[0].sandbox.as_ref()
        ),
        (None, None)
    );
    assert_eq!(r.dns.unwrap().domain, None);
}

#[test]
fn malformed_result_fields_are_code_6_naming_the_field() {
    let cases = [
        (json!([]), "invalid document: expected an object"),
        (json!({"ips": {}}), "invalid ips: expected an array"),
        (
            json!({"ips": [{"address": "10.0.0.300/24"}]}),
            "invalid ips[0].address: expected a CIDR",
        ),
        (
            json!({"ips": [{"gateway": "10.0.0.1"}]}),
            "missing ips[0].address",
        ),
        (
            json!({"ips": [{"address": "10.0.0.2/24", "version": "5"}]}),
            "invalid ips[0].version: expected \"4\" or \"6\"",
        ),
        (
            json!({"routes": [{"dst": "0.0.0.0/0", "scope": 256}]}),
            "invalid routes[0].scope: expected a small non-negative integer",
        ),
        (
            json!({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}),
            "invalid routes[0].gw: expected an IP address",
        ),
        (
            json!({"interfaces": [{"mac": "x"}]}),
            "missing interfaces[0].name",
        ),
        (
            json!({"interfaces": [{"name": "eth0", "mtu": -1}]}),
            "invalid interfaces[0].mtu: expected a small non-negative integer",
        ),
        (
            json!({"dns": {"nameservers": ["ok", 1]}}),
            "invalid dns.nameservers[1]: expected a string",
        ),
    ];
    for (v, msg) in cases {
        let e = CniResult::from_json(&v).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (code::DECODE, msg), "{v}");
    }
}

#[test]
fn result_of_an_unsupported_version_is_code_1() {
    let e = CniResult::from_json(&json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}))
        .unwrap_err();
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    assert!(e.details.unwrap().starts_with(r#"result is "0.2.0""#));
}
