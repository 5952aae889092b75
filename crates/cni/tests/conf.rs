//! `parse_conf`: version negotiation, field validation, the spec's example configs, prevResult,
//! GC attachments, requested IPs and CNI_ARGS (cni.md §1.3, §1.4, §1.8).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::Ipv4Addr;
use std::path::PathBuf;

use cni::{
    Attachment, CniError, CniResult, Command, DEFAULT_DATA_DIR, Dns, Env, IpConfig, NetConf,
    SUPPORTED_VERSIONS, code, parse_conf, version_output,
};
use serde_json::{Value, json};

fn env(command: Command) -> Env {
    Env {
        command,
        container_id: Some("ctr-aaaa1111".into()),
        netns: Some("/run/netns/pod1".into()),
        ifname: Some("eth0".into()),
        args: Vec::new(),
        path: vec!["/opt/cni/bin".into()],
    }
}

fn env_args(command: Command, args: &[(&str, &str)]) -> Env {
    let args = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env {
        args,
        ..env(command)
    }
}

/// The smallest valid flatnet config at `version`.
fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "flatnet", "type": "flatnet-cni", "subnet": "10.244.1.0/24"})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

fn parse_as(e: &Env, v: &Value) -> Result<NetConf, CniError> {
    parse_conf(e, &serde_json::to_vec(v).unwrap())
}

fn parse(cmd: Command, v: &Value) -> Result<NetConf, CniError> {
    parse_as(&env(cmd), v)
}

fn prev() -> Value {
    json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod1"}],
           "ips": [{"address": "10.244.1.2/32", "interface": 0}]})
}

// --- versions -------------------------------------------------------------------------------

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(Command::Add, &conf("1.1.0")).unwrap();
    assert_eq!(c.cni_version, "1.1.0");
    assert_eq!(
        (c.name.as_str(), c.plugin_type.as_str()),
        ("flatnet", "flatnet-cni")
    );
    assert_eq!(c.subnet, "10.244.1.0/24".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(
        (c.mtu, c.prev_result, c.dns, c.requested_ip),
        (None, None, None, None)
    );
    assert_eq!(c.valid_attachments, None);
    assert!(c.warnings.is_empty());
    assert_eq!(c.raw, conf("1.1.0"));
}

#[test]
fn every_supported_version_is_accepted_for_add_and_del() {
    for v in SUPPORTED_VERSIONS {
        for cmd in [Command::Add, Command::Del] {
            assert_eq!(parse(cmd, &conf(v)).unwrap().cni_version, *v);
        }
    }
}

#[test]
fn unknown_version_is_code_1_listing_what_is_supported() {
    let e = parse(Command::Add, &conf("9.9.9")).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (code::INCOMPATIBLE_VERSION, "incompatible CNI versions")
    );
    assert_eq!(
        e.details.as_deref(),
        Some(r#"config is "9.9.9", plugin supports ["0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#)
    );
}

#[test]
fn version_is_matched_exactly_and_checked_first() {
    for v in ["1.1", "v1.1.0", "1.1.0 ", "0.2.0"] {
        assert_eq!(
            parse(Command::Add, &conf(v)).unwrap_err().code,
            code::INCOMPATIBLE_VERSION,
            "{v}"
        );
    }
    // Nothing but a bad version: code 1, not 7 for the missing fields.
    let e = parse(Command::Add, &json!({"cniVersion": "9.9.9"})).unwrap_err();
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
}

#[test]
fn missing_version_means_0_1_0() {
    let e = parse(Command::Add, &without(conf("1.1.0"), "cniVersion")).unwrap_err();
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    assert!(e.details.unwrap().starts_with(r#"config is "0.1.0""#));
}

#[test]
fn check_needs_0_4_0() {
    for v in ["0.3.0", "0.3.1"] {
        let e = parse(Command::Check, &with(conf(v), "prevResult", prev())).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                code::INCOMPATIBLE_VERSION,
                "config version does not allow CHECK"
            )
        );
    }
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        parse(Command::Check, &with(conf(v), "prevResult", prev())).unwrap();
    }
}

#[test]
fn gc_and_status_need_1_1_0() {
    for cmd in [Command::Gc, Command::Status] {
        for v in ["0.3.1", "0.4.0", "1.0.0"] {
            let e = parse(cmd, &conf(v)).unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{cmd} at {v}");
            assert_eq!(e.msg, format!("config version does not allow {cmd}"));
        }
        parse(cmd, &conf("1.1.0")).unwrap();
    }
}

#[test]
fn version_reads_only_the_version_and_accepts_any() {
    let c = parse(Command::Version, &json!({"cniVersion": "9.9.9"})).unwrap();
    assert_eq!(c.cni_version, "9.9.9");
    let c = parse_conf(&env(Command::Version), b"").unwrap();
    assert_eq!(c.cni_version, "0.1.0");
    let e = parse_conf(&env(Command::Version), b"{").unwrap_err();
    assert_eq!(e.code, code::DECODE);
    assert_eq!(
        version_output("1.0.0"),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

// --- decoding and fields --------------------------------------------------------------------

#[test]
fn malformed_json_is_code_6_naming_the_parse_error() {
    for input in [
        &b"{\"cniVersion\": \"1.1.0\""[..],
        b"",
        b"not json",
        b"[1,2]",
        b"\"str\"",
    ] {
        let e = parse_conf(&env(Command::Add), input).unwrap_err();
        assert_eq!(e.code, code::DECODE, "{}", String::from_utf8_lossy(input));
        assert!(
            e.msg.starts_with("error decoding network config: "),
            "{}",
            e.msg
        );
    }
    let e = parse_conf(&env(Command::Add), b"{\"cniVersion\": ").unwrap_err();
    assert!(e.msg.contains("EOF while parsing"), "{}", e.msg);
}

#[test]
fn missing_name_is_code_7() {
    let e = parse(Command::Add, &without(conf("1.1.0"), "name")).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (code::INVALID_CONFIG, "missing network name")
    );
}

#[test]
fn invalid_name_is_code_7_with_the_value() {
    for (name, shown) in [
        (json!("-net"), "-net"),
        (json!("a b"), "a b"),
        (json!(""), ""),
        (json!(5), "5"),
    ] {
        let e = parse(Command::Add, &with(conf("1.1.0"), "name", name)).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (code::INVALID_CONFIG, "invalid network name")
        );
        assert_eq!(e.details.as_deref(), Some(shown));
    }
}

#[test]
fn type_must_be_present_and_a_binary_name() {
    let e = parse(Command::Add, &without(conf("1.1.0"), "type")).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (code::INVALID_CONFIG, "missing type")
    );
    for t in [json!(""), json!("../bin/sh"), json!(true)] {
        let e = parse(Command::Add, &with(conf("1.1.0"), "type", t)).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("invalid type"), "{}", e.msg);
    }
}

#[test]
fn missing_subnet_is_code_7_for_every_verb_but_version() {
    for cmd in [Command::Add, Command::Del, Command::Gc, Command::Status] {
        let e = parse(cmd, &without(conf("1.1.0"), "subnet")).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (code::INVALID_CONFIG, "missing subnet"),
            "{cmd}"
        );
    }
}

#[test]
fn bad_subnet_is_code_7_naming_subnet_and_the_value() {
    let cases = [
        (json!("10.244.1.0/31"), "10.244.1.0/31"),
        (json!("10.244.1.5/24"), "10.244.1.5/24"),
        (json!("fd00::/64"), "fd00::/64"),
        (json!("10.244.1.0"), "10.244.1.0"),
        (json!("banana"), "banana"),
        (json!(24), "24"),
    ];
    for (subnet, shown) in cases {
        let e = parse(Command::Add, &with(conf("1.1.0"), "subnet", subnet)).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("invalid subnet: "), "{}", e.msg);
        assert_eq!(e.details.as_deref(), Some(shown));
    }
    let c = parse(
        Command::Add,
        &with(conf("1.1.0"), "subnet", json!("10.244.1.0/30")),
    )
    .unwrap();
    assert_eq!(c.subnet.prefix_len(), 30);
}

#[test]
fn mtu_must_be_an_integer_in_range() {
    for ok in [576, 1450, 65535] {
        assert_eq!(
            parse(Command::Add, &with(conf("1.1.0"), "mtu", json!(ok)))
                .unwrap()
                .mtu,
            Some(ok)
        );
    }
    for bad in [
        json!(575),
        json!(65536),
        json!(-1),
        json!(1500.5),
        json!("1500"),
        json!(u64::MAX),
    ] {
        let e = parse(Command::Add, &with(conf("1.1.0"), "mtu", bad.clone())).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
        assert!(e.msg.starts_with("invalid mtu"), "{}", e.msg);
        assert_eq!(e.details.as_deref(), Some(cni_show(&bad).as_str()));
    }
}

fn cni_show(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

#[test]
fn data_dir_must_be_absolute() {
    let c = parse(
        Command::Add,
        &with(conf("1.1.0"), "dataDir", json!("/tmp/flatnet")),
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/tmp/flatnet"));
    for bad in [json!("var/lib"), json!(""), json!(1)] {
        let e = parse(Command::Add, &with(conf("1.1.0"), "dataDir", bad)).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("invalid dataDir"), "{}", e.msg);
    }
}

#[test]
fn null_optional_fields_count_as_absent() {
    let v = json!({"cniVersion": "1.0.0", "name": "n", "type": "flatnet-cni", "subnet": "10.0.0.0/16",
                   "mtu": null, "dataDir": null, "dns": null, "prevResult": null});
    let c = parse(Command::Add, &v).unwrap();
    assert_eq!((c.mtu, c.dns, c.prev_result), (None, None, None));
}

// --- the spec's examples, adapted -----------------------------------------------------------

/// The spec appendix's `dbnet` bridge config with `type` switched to flatnet and a `subnet`:
/// every other key (bridge, keyA, ipMasq, ipam, args, runtimeConfig, capabilities) is unknown
/// to flatnet and must be kept, not refused.
fn spec_dbnet() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "dbnet",
        "type": "flatnet-cni",
        "subnet": "10.1.0.0/16",
        "bridge": "cni0",
        "keyA": ["some more", "plugin specific", "configuration"],
        "ipMasq": true,
        "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1",
                 "routes": [{"dst": "0.0.0.0/0"}]},
        "dns": {"nameservers": ["10.1.0.1"]},
        "args": {"labels": {"appVersion": "1.0"}},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "sysctl": {"net.core.somaxconn": "500"},
        "cni.dev/some-future-key": {"x": 1}
    })
}

#[test]
fn spec_example_with_unknown_keys_parses() {
    let c = parse(Command::Add, &spec_dbnet()).unwrap();
    assert_eq!(c.name, "dbnet");
    assert_eq!(c.subnet, "10.1.0.0/16".parse().unwrap());
    assert_eq!(
        c.dns,
        Some(Dns {
            nameservers: vec!["10.1.0.1".into()],
            ..Dns::default()
        })
    );
    assert_eq!(c.requested_ip, None);
    assert_eq!(c.raw["keyA"][1], "plugin specific");
    assert_eq!(c.raw["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
}

#[test]
fn spec_example_chained_request_with_prev_result_parses() {
    // The appendix's portmap request, as flatnet would see it if chained second.
    let v = json!({
        "cniVersion": "1.1.0", "name": "dbnet", "type": "flatnet-cni", "subnet": "10.1.0.0/16",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        }
    });
    for cmd in [Command::Add, Command::Check, Command::Del] {
        let prev = parse(cmd, &v).unwrap().prev_result.unwrap();
        assert_eq!(
            prev.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(prev.ips[0].interface, Some(2));
        assert_eq!(
            prev.to_json("1.1.0"),
            with(v["prevResult"].clone(), "cniVersion", json!("1.1.0"))
        );
    }
}

// --- prevResult -----------------------------------------------------------------------------

#[test]
fn prev_result_of_each_version_parses() {
    let result = CniResult {
        interfaces: vec![cni::Interface {
            name: "eth0".into(),
            sandbox: Some("/run/netns/pod1".into()),
            ..Default::default()
        }],
        ips: vec![IpConfig {
            address: "10.244.1.2/32".parse().unwrap(),
            gateway: Some("169.254.1.1".parse().unwrap()),
            interface: Some(0),
        }],
        routes: Vec::new(),
        dns: None,
    };
    for v in SUPPORTED_VERSIONS {
        let shaped = result.to_json(v);
        let cmd = if *v == "0.3.0" || *v == "0.3.1" {
            Command::Del
        } else {
            Command::Check
        };
        let c = parse(cmd, &with(conf(v), "prevResult", shaped)).unwrap();
        assert_eq!(c.prev_result.as_ref(), Some(&result), "{v}");
    }
    // The spec's 0.4.0 appendix shape, with "version" in ips.
    let legacy = json!({"ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 0}],
                        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/blue"}]});
    let c = parse(Command::Check, &with(conf("0.4.0"), "prevResult", legacy)).unwrap();
    assert_eq!(
        c.prev_result.unwrap().ips[0].address.to_string(),
        "10.0.0.5/32"
    );
}

#[test]
fn check_without_prev_result_is_code_7() {
    let e = parse(Command::Check, &conf("1.1.0")).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (code::INVALID_CONFIG, "required prevResult missing")
    );
}

#[test]
fn del_accepts_an_empty_prev_result() {
    let c = parse(Command::Del, &with(conf("1.1.0"), "prevResult", json!({}))).unwrap();
    assert_eq!(c.prev_result, Some(CniResult::default()));
}

#[test]
fn malformed_prev_result_is_code_7_except_on_del() {
    let bad = with(
        conf("1.1.0"),
        "prevResult",
        json!({"ips": [{"address": "nope"}]}),
    );
    for cmd in [Command::Add, Command::Check] {
        let e = parse(cmd, &bad).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                code::INVALID_CONFIG,
                "invalid prevResult.ips[0].address: expected a CIDR"
            )
        );
    }
    let c = parse(Command::Del, &bad).unwrap();
    assert_eq!(c.prev_result, None);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("prevResult"), "{:?}", c.warnings);
}

// --- GC ---------------------------------------------------------------------------------------

fn attachment(id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
    }
}

#[test]
fn gc_reads_valid_attachments() {
    let list = json!([{"containerID": "ctr-1", "ifname": "eth0"}, {"containerID": "ctr-2", "ifname": "net1"}]);
    let c = parse(
        Command::Gc,
        &with(conf("1.1.0"), "cni.dev/valid-attachments", list),
    )
    .unwrap();
    assert_eq!(
        c.valid_attachments,
        Some(vec![
            attachment("ctr-1", "eth0"),
            attachment("ctr-2", "net1")
        ])
    );
}

#[test]
fn gc_falls_back_to_the_legacy_attachments_key() {
    let list = json!([{"containerID": "ctr-1", "ifname": "eth0"}]);
    let c = parse(
        Command::Gc,
        &with(conf("1.1.0"), "cni.dev/attachments", list),
    )
    .unwrap();
    assert_eq!(c.valid_attachments, Some(vec![attachment("ctr-1", "eth0")]));
}

#[test]
fn gc_prefers_valid_attachments_when_libcni_sends_both() {
    let v = with(
        with(
            conf("1.1.0"),
            "cni.dev/valid-attachments",
            json!([{"containerID": "new", "ifname": "eth0"}]),
        ),
        "cni.dev/attachments",
        json!([{"containerID": "old", "ifname": "eth0"}]),
    );
    assert_eq!(
        parse(Command::Gc, &v).unwrap().valid_attachments,
        Some(vec![attachment("new", "eth0")])
    );
}

#[test]
fn gc_distinguishes_no_list_from_an_empty_list() {
    assert_eq!(
        parse(Command::Gc, &conf("1.1.0"))
            .unwrap()
            .valid_attachments,
        None
    );
    let c = parse(
        Command::Gc,
        &with(conf("1.1.0"), "cni.dev/valid-attachments", json!([])),
    )
    .unwrap();
    assert_eq!(c.valid_attachments, Some(Vec::new()));
}

#[test]
fn gc_malformed_attachment_is_code_7_naming_it() {
    let v = with(
        conf("1.1.0"),
        "cni.dev/valid-attachments",
        json!([{"containerID": "c"}]),
    );
    let e = parse(Command::Gc, &v).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (
            code::INVALID_CONFIG,
            "missing cni.dev/valid-attachments[0].ifname"
        )
    );
}

#[test]
fn attachments_are_only_read_for_gc() {
    let v = with(conf("1.1.0"), "cni.dev/valid-attachments", json!("garbage"));
    assert_eq!(parse(Command::Add, &v).unwrap().valid_attachments, None);
}

// --- requested IP and CNI_ARGS ----------------------------------------------------------------

const K8S_ARGS: [(&str, &str); 4] = [
    ("IgnoreUnknown", "1"),
    ("K8S_POD_NAMESPACE", "default"),
    ("K8S_POD_NAME", "web-0"),
    ("K8S_POD_INFRA_CONTAINER_ID", "ctr-aaaa1111"),
];

fn ip(s: &str) -> Option<Ipv4Addr> {
    Some(s.parse().unwrap())
}

#[test]
fn requested_ip_comes_from_cni_args() {
    let mut args = K8S_ARGS.to_vec();
    args.push(("IP", "10.244.1.77"));
    let c = parse_as(&env_args(Command::Add, &args), &conf("1.1.0")).unwrap();
    assert_eq!(c.requested_ip, ip("10.244.1.77"));
}

#[test]
fn requested_ip_comes_from_args_or_runtime_config() {
    let args = with(
        conf("1.1.0"),
        "args",
        json!({"cni": {"ips": ["10.244.1.8"]}}),
    );
    assert_eq!(
        parse(Command::Add, &args).unwrap().requested_ip,
        ip("10.244.1.8")
    );
    let rc = with(
        conf("1.1.0"),
        "runtimeConfig",
        json!({"ips": ["10.244.1.9/24"]}),
    );
    assert_eq!(
        parse(Command::Add, &rc).unwrap().requested_ip,
        ip("10.244.1.9")
    );
}

#[test]
fn cni_args_ip_wins_over_args_then_runtime_config() {
    let v = with(
        with(
            conf("1.1.0"),
            "args",
            json!({"cni": {"ips": ["10.244.1.8"]}}),
        ),
        "runtimeConfig",
        json!({"ips": ["10.244.1.9"]}),
    );
    let e = env_args(Command::Add, &[("IP", "10.244.1.7")]);
    assert_eq!(parse_as(&e, &v).unwrap().requested_ip, ip("10.244.1.7"));
    assert_eq!(
        parse(Command::Add, &v).unwrap().requested_ip,
        ip("10.244.1.8")
    );
}

#[test]
fn bad_requested_ip_is_code_7_naming_the_source() {
    let cases = [
        (
            env_args(Command::Add, &[("IP", "10.9.9.9")]),
            conf("1.1.0"),
            "invalid CNI_ARGS IP: outside subnet 10.244.1.0/24",
            "10.9.9.9",
        ),
        (
            env_args(Command::Add, &[("IP", "banana")]),
            conf("1.1.0"),
            "invalid CNI_ARGS IP: expected an IP address",
            "banana",
        ),
        (
            env(Command::Add),
            with(conf("1.1.0"), "runtimeConfig", json!({"ips": ["fd00::5"]})),
            "invalid runtimeConfig.ips[0]: flatnet assigns IPv4 addresses only",
            "fd00::5",
        ),
        (
            env(Command::Add),
            with(conf("1.1.0"), "args", json!({"cni": {"ips": [7]}})),
            "invalid args.cni.ips[0]: expected an IP address",
            "7",
        ),
    ];
    for (e, v, msg, details) in cases {
        let err = parse_as(&e, &v).unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str(), err.details.as_deref()),
            (code::INVALID_CONFIG, msg, Some(details))
        );
    }
}

#[test]
fn requested_ip_is_only_read_for_add() {
    let e = env_args(Command::Del, &[("IP", "banana")]);
    assert_eq!(parse_as(&e, &conf("1.1.0")).unwrap().requested_ip, None);
}

#[test]
fn kubernetes_args_are_accepted_without_ignore_unknown() {
    let args = &K8S_ARGS[1..];
    parse_as(&env_args(Command::Add, args), &conf("1.1.0")).unwrap();
}

#[test]
fn unknown_cni_args_are_code_2_naming_key_and_value() {
    let e = parse_as(
        &env_args(Command::Add, &[("FOO", "bar"), ("K8S_POD_NAME", "web-0")]),
        &conf("1.1.0"),
    )
    .unwrap_err();
    assert_eq!(e.code, code::UNSUPPORTED_FIELD);
    assert!(e.msg.contains("FOO=bar"), "{}", e.msg);
    assert_eq!(e.details.as_deref(), Some("FOO=bar"));
    let e = parse_as(
        &env_args(Command::Check, &[("FOO", "bar")]),
        &with(conf("1.1.0"), "prevResult", prev()),
    )
    .unwrap_err();
    assert_eq!(e.code, code::UNSUPPORTED_FIELD);
}

#[test]
fn ignore_unknown_allows_unknown_cni_args() {
    for flag in ["1", "true", "True"] {
        parse_as(
            &env_args(Command::Add, &[("IgnoreUnknown", flag), ("FOO", "bar")]),
            &conf("1.1.0"),
        )
        .unwrap();
    }
    let e = parse_as(
        &env_args(Command::Add, &[("IgnoreUnknown", "0"), ("FOO", "bar")]),
        &conf("1.1.0"),
    )
    .unwrap_err();
    assert_eq!(e.code, code::UNSUPPORTED_FIELD);
    let e = parse_as(
        &env_args(Command::Add, &[("IgnoreUnknown", "maybe")]),
        &conf("1.1.0"),
    )
    .unwrap_err();
    assert_eq!(
        (e.code, e.details.as_deref()),
        (code::INVALID_ENV, Some("maybe"))
    );
}

#[test]
fn del_only_warns_about_unknown_cni_args() {
    let c = parse_as(&env_args(Command::Del, &[("FOO", "bar")]), &conf("1.1.0")).unwrap();
    assert_eq!(c.warnings, ["ignoring unknown CNI_ARGS FOO=bar"]);
}
