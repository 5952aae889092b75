//! `Env::from_lookup`: which variables each verb needs, and how bad values are refused
//! (cni.md §1.2, codes and messages as the reference skel).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::HashMap;
use std::path::PathBuf;

use cni::{CniError, Command, Env, code};

const CONTAINERID: &str = "CNI_CONTAINERID";
const NETNS: &str = "CNI_NETNS";
const IFNAME: &str = "CNI_IFNAME";
const ARGS: &str = "CNI_ARGS";
const PATH: &str = "CNI_PATH";

/// A complete kubelet-style environment for `cmd`, minus `drop`, with `set` overriding.
fn lookup(cmd: &str, drop: &[&str], set: &[(&str, &str)]) -> Result<Option<Env>, CniError> {
    let mut vars: HashMap<&str, &str> = HashMap::from([
        ("CNI_COMMAND", cmd),
        (CONTAINERID, "ctr-aaaa1111"),
        (NETNS, "/run/netns/pod1"),
        (IFNAME, "eth0"),
        (
            ARGS,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        (PATH, "/opt/cni/bin:/usr/lib/cni"),
    ]);
    for d in drop {
        vars.remove(d);
    }
    vars.extend(set.iter().copied());
    Env::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
}

fn err(r: Result<Option<Env>, CniError>) -> CniError {
    r.expect_err("expected an error")
}

#[test]
fn no_command_asks_for_the_about_text() {
    assert_eq!(Env::from_lookup(|_| None).unwrap(), None);
    assert_eq!(lookup("", &[], &[]).unwrap(), None);
}

#[test]
fn unknown_command_is_code_4_naming_it() {
    for cmd in ["add", "UPDATE", "ADD "] {
        let e = err(lookup(cmd, &[], &[]));
        assert_eq!(
            (e.code, e.msg),
            (code::INVALID_ENV, format!("unknown CNI_COMMAND: {cmd}"))
        );
    }
}

#[test]
fn add_reads_every_variable() {
    let env = lookup("ADD", &[], &[]).unwrap().unwrap();
    assert_eq!(env.command, Command::Add);
    assert_eq!(env.container_id.as_deref(), Some("ctr-aaaa1111"));
    assert_eq!(env.netns, Some(PathBuf::from("/run/netns/pod1")));
    assert_eq!(env.ifname.as_deref(), Some("eth0"));
    assert_eq!(env.arg("K8S_POD_NAME"), Some("web-0"));
    assert_eq!(env.args.len(), 3);
    assert_eq!(
        env.path,
        [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    );
}

#[test]
fn each_missing_required_variable_is_named_per_verb() {
    let table: &[(&str, &[&str])] = &[
        ("ADD", &[CONTAINERID, NETNS, IFNAME]),
        ("CHECK", &[CONTAINERID, NETNS, IFNAME]),
        ("DEL", &[CONTAINERID, IFNAME]),
        ("GC", &[PATH]),
        ("STATUS", &[]),
        ("VERSION", &[]),
    ];
    for (cmd, required) in table {
        for var in [CONTAINERID, NETNS, IFNAME, ARGS, PATH] {
            let got = lookup(cmd, &[var], &[]);
            if required.contains(&var) {
                let e = err(got);
                assert_eq!(e.code, code::INVALID_ENV, "{cmd} without {var}");
                assert_eq!(e.msg, format!("required env variables [{var}] missing"));
            } else {
                assert!(got.unwrap().is_some(), "{cmd} without {var} should be fine");
            }
        }
    }
}

#[test]
fn all_missing_variables_are_named_at_once_like_the_reference() {
    let e = err(lookup(
        "ADD",
        &[CONTAINERID, NETNS, IFNAME, ARGS, PATH],
        &[],
    ));
    assert_eq!(
        e.msg,
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
    );
    assert_eq!(e.details, None);
}

#[test]
fn empty_netns_or_path_counts_as_missing() {
    assert_eq!(
        err(lookup("ADD", &[], &[(NETNS, "")])).msg,
        "required env variables [CNI_NETNS] missing"
    );
    assert_eq!(
        err(lookup("GC", &[], &[(PATH, "")])).msg,
        "required env variables [CNI_PATH] missing"
    );
}

#[test]
fn del_works_without_netns() {
    for env in [
        lookup("DEL", &[NETNS], &[]),
        lookup("DEL", &[], &[(NETNS, "")]),
    ] {
        let env = env.unwrap().unwrap();
        assert_eq!(env.netns, None);
        assert_eq!(env.container_id.as_deref(), Some("ctr-aaaa1111"));
    }
}

#[test]
fn empty_container_id_is_code_3() {
    for cmd in ["ADD", "DEL", "CHECK"] {
        let e = err(lookup(cmd, &[], &[(CONTAINERID, "")]));
        assert_eq!(
            (e.code, e.msg.as_str()),
            (code::UNKNOWN_CONTAINER, "missing containerID"),
            "{cmd}"
        );
    }
}

#[test]
fn bad_container_id_characters_are_code_4_with_the_value() {
    for id in ["-bad id", "a b", "a/b", ".hidden", "ctr;rm", "ctré"] {
        let e = err(lookup("ADD", &[], &[(CONTAINERID, id)]));
        assert_eq!(e.code, code::INVALID_ENV, "{id}");
        assert_eq!(e.msg, "invalid characters in containerID");
        assert_eq!(e.details.as_deref(), Some(id));
    }
}

#[test]
fn bad_interface_names_are_code_4_with_the_value() {
    let cases = [
        ("", "interface name is empty"),
        ("a234567890123456", "interface name is longer than 15 bytes"),
        (".", "interface name is . or .."),
        ("..", "interface name is . or .."),
        (
            "eth/0",
            "interface name contains / or : or whitespace characters",
        ),
        (
            "eth:0",
            "interface name contains / or : or whitespace characters",
        ),
        (
            "eth 0",
            "interface name contains / or : or whitespace characters",
        ),
        (
            "eth\t0",
            "interface name contains / or : or whitespace characters",
        ),
    ];
    for cmd in ["ADD", "DEL", "CHECK"] {
        for (name, msg) in cases {
            let e = err(lookup(cmd, &[], &[(IFNAME, name)]));
            assert_eq!(
                (e.code, e.msg.as_str()),
                (code::INVALID_ENV, msg),
                "{cmd} {name:?}"
            );
            assert_eq!(e.details.as_deref(), Some(name));
        }
    }
}

#[test]
fn fifteen_byte_interface_name_is_accepted() {
    let env = lookup("ADD", &[], &[(IFNAME, "a23456789012345")])
        .unwrap()
        .unwrap();
    assert_eq!(env.ifname.as_deref(), Some("a23456789012345"));
}

#[test]
fn gc_status_and_version_ignore_per_attachment_variables() {
    for cmd in ["GC", "STATUS", "VERSION"] {
        let env = lookup(
            cmd,
            &[],
            &[(CONTAINERID, "-bad id"), (IFNAME, "a/b"), (ARGS, "junk")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (env.container_id, env.netns, env.ifname),
            (None, None, None),
            "{cmd}"
        );
        assert!(env.args.is_empty());
    }
    let version = lookup("VERSION", &[], &[]).unwrap().unwrap();
    assert!(version.path.is_empty());
    let gc = lookup("GC", &[], &[]).unwrap().unwrap();
    assert_eq!(gc.path.len(), 2);
}

#[test]
fn malformed_cni_args_pair_is_code_4() {
    let e = err(lookup("ADD", &[], &[(ARGS, "IgnoreUnknown=1;oops")]));
    assert_eq!(
        (e.code, e.details.as_deref()),
        (code::INVALID_ENV, Some("oops"))
    );
}

#[test]
fn cni_path_drops_empty_entries() {
    let env = lookup("STATUS", &[], &[(PATH, ":/opt/cni/bin::")])
        .unwrap()
        .unwrap();
    assert_eq!(env.path, [PathBuf::from("/opt/cni/bin")]);
}
