//! Property tests: no input makes the parsers panic, and results round-trip through every
//! version's shape for the fields that version has.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni::{
    CniResult, Command, Dns, Env, Interface, IpConfig, Route, SUPPORTED_VERSIONS, parse_conf,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use serde_json::{Map, Value};

const COMMANDS: [Command; 6] = [
    Command::Add,
    Command::Del,
    Command::Check,
    Command::Gc,
    Command::Status,
    Command::Version,
];

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(COMMANDS.to_vec())
}

/// A valid-looking env for `command`, with arbitrary CNI_ARGS pairs.
fn env_with_args(command: Command, args: Vec<(String, String)>) -> Env {
    Env {
        command,
        container_id: Some("ctr-1".into()),
        netns: Some("/run/netns/p".into()),
        ifname: Some("eth0".into()),
        args,
        path: Vec::new(),
    }
}

fn cni_args() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("IP".to_owned()),
        Just("IgnoreUnknown".to_owned()),
        Just("K8S_POD_NAME".to_owned()),
        "[A-Za-z_]{1,6}",
    ];
    let value = prop_oneof![
        Just("10.244.1.7".to_owned()),
        Just("1".to_owned()),
        ".{0,12}"
    ];
    proptest::collection::vec((key, value), 0..4)
}

/// Keys flatnet reads, so generated documents reach the deeper validation paths.
const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "subnet",
    "dataDir",
    "mtu",
    "dns",
    "prevResult",
    "args",
    "cni",
    "ips",
    "runtimeConfig",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "containerID",
    "ifname",
    "interfaces",
    "routes",
    "address",
    "gateway",
    "interface",
    "version",
    "dst",
    "gw",
    "scope",
    "table",
    "nameservers",
    "domain",
    "search",
    "options",
    "sandbox",
    "mac",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        proptest::sample::select(SUPPORTED_VERSIONS.to_vec()).prop_map(Value::from),
        proptest::sample::select(vec![
            "10.244.1.0/24",
            "10.244.1.7",
            "10.244.1.7/24",
            "fd00::1/64",
            "0.0.0.0/0",
            "/var/lib/x",
            "flatnet",
            "flatnet-cni",
            "4",
            "6",
            "",
            "9.9.9",
        ])
        .prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS.to_vec()), inner), 0..6)
                .prop_map(|kv| Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>()
                )),
        ]
    })
}

/// A config that passes the version check for every verb, with an arbitrary rest.
fn config_like() -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        (proptest::sample::select(KEYS.to_vec()), json_value()),
        0..8,
    )
    .prop_map(|kv| {
        let mut m: Map<String, Value> = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        m.insert("cniVersion".into(), "1.1.0".into());
        Value::Object(m)
    })
}

fn env_value() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        proptest::sample::select(vec![
            "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "eth0", "ctr-1"
        ])
        .prop_map(str::to_owned),
        ".{0,24}",
        "[a-zA-Z0-9_.:;=/ -]{0,20}",
    ])
}

proptest! {
    #[test]
    fn parse_conf_never_panics_on_bytes(cmd in command(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_conf(&env_with_args(cmd, Vec::new()), &bytes);
    }

    #[test]
    fn parse_conf_never_panics_on_json_like_text(cmd in command(), text in r#"[{}\[\]":,0-9a-zA-Z./ \\-]{0,80}"#) {
        let _ = parse_conf(&env_with_args(cmd, Vec::new()), text.as_bytes());
    }

    #[test]
    fn parse_conf_never_panics_on_json_documents(cmd in command(), doc in config_like(), args in cni_args()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let _ = parse_conf(&env_with_args(cmd, args), &bytes);
    }

    #[test]
    fn parse_conf_never_panics_on_arbitrary_json(cmd in command(), doc in json_value()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let _ = parse_conf(&env_with_args(cmd, Vec::new()), &bytes);
        let _ = CniResult::from_json(&doc);
    }

    #[test]
    fn env_from_lookup_never_panics(values in proptest::collection::vec(env_value(), 6)) {
        let names = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];
        let vars: HashMap<&str, Option<String>> = names.into_iter().zip(values).collect();
        let _ = Env::from_lookup(|k| vars.get(k).cloned().flatten());
    }

    #[test]
    fn result_round_trips_through_every_version(r in result()) {
        for v in SUPPORTED_VERSIONS {
            let back = CniResult::from_json(&r.to_json(v)).unwrap();
            prop_assert_eq!(back, fields_of(&r, v), "version {}", v);
        }
    }
}

/// What `version` can carry of `r`: before 1.1.0 no interface MTU and no route extras.
fn fields_of(r: &CniResult, version: &str) -> CniResult {
    let mut r = r.clone();
    if version != "1.1.0" {
        for i in &mut r.interfaces {
            i.mtu = None;
        }
        for rt in &mut r.routes {
            (rt.mtu, rt.advmss, rt.priority, rt.table, rt.scope) = (None, None, None, None, None);
        }
    }
    r
}

fn ip_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]
}

fn ip_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(n, p)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(n), p).unwrap())),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(n, p)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(n), p).unwrap())),
    ]
}

/// Non-empty: empty strings are written as absent.
fn text() -> impl Strategy<Value = String> {
    ".{1,12}"
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(".{0,12}", 0..3)
}

fn result() -> impl Strategy<Value = CniResult> {
    let interface = (
        text(),
        proptest::option::of(text()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
    )
        .prop_map(|(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu,
            sandbox,
        });
    let route = (
        ip_net(),
        proptest::option::of(ip_addr()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, gw, mtu, advmss, priority, table, scope)| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        });
    let dns = (
        strings(),
        proptest::option::of(text()),
        strings(),
        strings(),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        });
    (
        proptest::collection::vec(interface, 0..4),
        proptest::collection::vec(
            (
                ip_net(),
                proptest::option::of(ip_addr()),
                any::<Option<usize>>(),
            ),
            0..4,
        ),
        proptest::collection::vec(route, 0..4),
        proptest::option::of(dns),
    )
        .prop_map(|(interfaces, ips, routes, dns)| {
            let n = interfaces.len();
            let ips = ips
                .into_iter()
                .map(|(address, gateway, idx)| IpConfig {
                    address,
                    gateway,
                    // The index must point into `interfaces`.
                    interface: idx.filter(|_| n > 0).map(|i| i % n),
                })
                .collect();
            CniResult {
                interfaces,
                ips,
                routes,
                dns,
            }
        })
}
