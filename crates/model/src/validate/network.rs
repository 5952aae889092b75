//! NetworkPolicy and Ingress checks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{Errs, at, check_int_or_port_name, check_label_selector, check_protocol, field, index};
use crate::names;

pub(super) fn check_network_policy(e: &mut Errs, root: &Map<String, Value>) {
    let Some(spec) = field(root, "spec") else {
        e.required("spec");
        return;
    };
    let Some(spec) = e.object(spec, "spec") else {
        return;
    };
    // A missing podSelector decodes as the empty selector (all pods), as in the API server.
    if let Some(sel) = field(spec, "podSelector") {
        check_label_selector(e, sel, "spec.podSelector");
    }
    if let Some(types) = e.opt_str_list(spec, "policyTypes", "spec") {
        let mut seen = Vec::new();
        for (i, t) in types.iter().enumerate() {
            let p = index("spec.policyTypes", i);
            if !matches!(*t, "Ingress" | "Egress") {
                e.unsupported(&p, &Value::from(*t), &["Ingress", "Egress"]);
            } else if seen.contains(t) {
                e.duplicate(&p, &Value::from(*t));
            } else {
                seen.push(t);
            }
        }
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        let Some(rules) = e.opt_array(spec, dir, "spec") else {
            continue;
        };
        let dp = at("spec", dir);
        for (i, rule) in rules.iter().enumerate() {
            let rp = index(&dp, i);
            let Some(rule) = e.object(rule, &rp) else {
                continue;
            };
            if let Some(ports) = e.opt_array(rule, "ports", &rp) {
                let pp = at(&rp, "ports");
                for (j, port) in ports.iter().enumerate() {
                    check_policy_port(e, port, &index(&pp, j));
                }
            }
            if let Some(list) = e.opt_array(rule, peers, &rp) {
                let pp = at(&rp, peers);
                for (j, peer) in list.iter().enumerate() {
                    check_peer(e, peer, &index(&pp, j));
                }
            }
        }
    }
}

fn check_policy_port(e: &mut Errs, v: &Value, p: &str) {
    let Some(port) = e.object(v, p) else { return };
    check_protocol(e, port, p);
    let number = match field(port, "port") {
        None => None,
        Some(v) => {
            check_int_or_port_name(e, v, &at(p, "port"));
            v.as_i64()
        }
    };
    let Some(end) = field(port, "endPort") else {
        return;
    };
    let ep = at(p, "endPort");
    match field(port, "port") {
        None => e.required_because(&at(p, "port"), "must be specified when `endPort` is set"),
        Some(Value::String(_)) => {
            e.forbidden(&ep, "may not be specified when `port` is non-numeric")
        }
        Some(_) => {
            if let (Some(end_n), Some(start)) = (e.port_number(end, &ep), number)
                && i64::from(end_n) < start
            {
                e.invalid(&ep, end, "must be greater than or equal to `port`");
            }
        }
    }
}

fn check_peer(e: &mut Errs, v: &Value, p: &str) {
    let Some(peer) = e.object(v, p) else { return };
    let pod = field(peer, "podSelector");
    let ns = field(peer, "namespaceSelector");
    let block = field(peer, "ipBlock");
    match (pod.is_some() || ns.is_some(), block.is_some()) {
        (false, false) => e.required_because(p, "must specify a peer"),
        (true, true) => e.forbidden(p, "may not specify both ipBlock and another peer"),
        _ => {}
    }
    if let Some(sel) = pod {
        check_label_selector(e, sel, &at(p, "podSelector"));
    }
    if let Some(sel) = ns {
        check_label_selector(e, sel, &at(p, "namespaceSelector"));
    }
    let Some(block) = block else { return };
    let bp = at(p, "ipBlock");
    let Some(block) = e.object(block, &bp) else {
        return;
    };
    let cidr = match e.req_str(block, "cidr", &bp) {
        Some(s) => parse_cidr(e, s, &at(&bp, "cidr")),
        None => None,
    };
    let Some(excepts) = e.opt_str_list(block, "except", &bp) else {
        return;
    };
    for (i, s) in excepts.iter().enumerate() {
        let xp = index(&at(&bp, "except"), i);
        let (Some(ex), Some(cidr)) = (parse_cidr(e, s, &xp), cidr) else {
            continue;
        };
        let inside = ex.prefix_len() > cidr.prefix_len() && cidr.trunc().contains(&ex.network());
        if !inside {
            e.invalid(&xp, &Value::from(*s), "must be a strict subset of `cidr`");
        }
    }
}

fn parse_cidr(e: &mut Errs, s: &str, p: &str) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(net) => Some(net),
        Err(_) => {
            e.invalid(
                p,
                &Value::from(s),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            );
            None
        }
    }
}

/// `spec.controller` is required: a domain-prefixed path of at most 250 characters, as the
/// API server checks it.
pub(super) fn check_ingress_class(e: &mut Errs, root: &Map<String, Value>) {
    let Some(spec_v) = field(root, "spec") else {
        e.required("spec");
        return;
    };
    let Some(spec) = e.object(spec_v, "spec") else {
        return;
    };
    if let Some(c) = e.req_str(spec, "controller", "spec") {
        let ok = c.len() <= 250
            && c.split_once('/').is_some_and(|(domain, path)| {
                names::dns1123_subdomain(domain).is_ok() && !path.is_empty()
            });
        if !ok {
            e.invalid(
                "spec.controller",
                &spec["controller"],
                "must be a domain-prefixed path of at most 250 characters (such as \"flatnet.io/ingress-gateway\")",
            );
        }
    }
}

pub(super) fn check_ingress(e: &mut Errs, root: &Map<String, Value>) {
    let Some(spec_v) = field(root, "spec") else {
        e.required("spec");
        return;
    };
    let Some(spec) = e.object(spec_v, "spec") else {
        return;
    };
    if let Some(class) = e.opt_str(spec, "ingressClassName", "spec")
        && let Err(detail) = names::dns1123_subdomain(class)
    {
        e.invalid("spec.ingressClassName", &spec["ingressClassName"], detail);
    }
    let default_backend = field(spec, "defaultBackend");
    if let Some(b) = default_backend {
        check_backend(e, b, "spec.defaultBackend");
    }
    let rules = e.opt_array(spec, "rules", "spec").unwrap_or_default();
    if default_backend.is_none()
        && rules.is_empty()
        && field(spec, "rules").is_none_or(Value::is_array)
    {
        e.invalid(
            "spec",
            spec_v,
            "either `defaultBackend` or `rules` must be specified",
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        let rp = index("spec.rules", i);
        let Some(rule) = e.object(rule, &rp) else {
            continue;
        };
        if let Some(host) = e.opt_str(rule, "host", &rp) {
            check_host(e, host, &at(&rp, "host"));
        }
        let Some(http) = e.opt_object(rule, "http", &rp) else {
            continue;
        };
        let hp = at(&rp, "http");
        let paths = match e.opt_array(http, "paths", &hp) {
            Some(paths) if !paths.is_empty() => paths,
            Some(_) | None => {
                if field(http, "paths").is_none_or(Value::is_array) {
                    e.required(&at(&hp, "paths"));
                }
                continue;
            }
        };
        for (j, path) in paths.iter().enumerate() {
            let pp = index(&at(&hp, "paths"), j);
            let Some(path) = e.object(path, &pp) else {
                continue;
            };
            let path_type = match e.req_str(path, "pathType", &pp) {
                Some(t @ ("Exact" | "Prefix" | "ImplementationSpecific")) => Some(t),
                Some(_) => {
                    e.unsupported(
                        &at(&pp, "pathType"),
                        &path["pathType"],
                        &["Exact", "Prefix", "ImplementationSpecific"],
                    );
                    None
                }
                None => None,
            };
            match e.opt_str(path, "path", &pp) {
                Some(s) if s.starts_with('/') => {}
                Some(_) => e.invalid(&at(&pp, "path"), &path["path"], "must be an absolute path"),
                None if matches!(path_type, Some("Exact" | "Prefix"))
                    && field(path, "path").is_none() =>
                {
                    e.required_because(&at(&pp, "path"), "must be specified for Exact and Prefix")
                }
                None => {}
            }
            match field(path, "backend") {
                None => e.required(&at(&pp, "backend")),
                Some(b) => check_backend(e, b, &at(&pp, "backend")),
            }
        }
    }
    if let Some(tls) = e.opt_array(spec, "tls", "spec") {
        for (i, t) in tls.iter().enumerate() {
            let tp = index("spec.tls", i);
            let Some(t) = e.object(t, &tp) else { continue };
            if let Some(hosts) = e.opt_str_list(t, "hosts", &tp) {
                for (j, h) in hosts.iter().enumerate() {
                    check_host(e, h, &index(&at(&tp, "hosts"), j));
                }
            }
            if let Some(secret) = e.opt_str(t, "secretName", &tp)
                && let Err(detail) = names::dns1123_subdomain(secret)
            {
                e.invalid(&at(&tp, "secretName"), &t["secretName"], detail);
            }
        }
    }
}

/// A rule host: a DNS name, optionally with a leading `*.` wildcard label; not an IP.
fn check_host(e: &mut Errs, host: &str, p: &str) {
    if host.parse::<IpAddr>().is_ok() {
        e.invalid(
            p,
            &Value::from(host),
            "must be a DNS name, not an IP address",
        );
        return;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if let Err(detail) = names::dns1123_subdomain(name) {
        if host.contains('*') && !host.starts_with("*.") {
            e.invalid(
                p,
                &Value::from(host),
                "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS \
                 subdomain",
            );
        } else {
            e.invalid(p, &Value::from(host), detail);
        }
    }
}

fn check_backend(e: &mut Errs, v: &Value, p: &str) {
    let Some(b) = e.object(v, p) else { return };
    if field(b, "resource").is_some() {
        e.forbidden(
            &at(p, "resource"),
            "resource backends are not supported by flatnet",
        );
        return;
    }
    let Some(svc) = field(b, "service") else {
        e.required(&at(p, "service"));
        return;
    };
    let sp = at(p, "service");
    let Some(svc) = e.object(svc, &sp) else {
        return;
    };
    if let Some(name) = e.req_str(svc, "name", &sp)
        && let Err(detail) = names::dns1035_label(name)
    {
        e.invalid(&at(&sp, "name"), &svc["name"], detail);
    }
    let pp = at(&sp, "port");
    let Some(port) = field(svc, "port") else {
        e.required_because(&pp, "port name or number is required");
        return;
    };
    let Some(port) = e.object(port, &pp) else {
        return;
    };
    match (field(port, "number"), field(port, "name")) {
        (Some(_), Some(_)) => e.invalid(
            &pp,
            &Value::Object(port.clone()),
            "cannot set both port name & port number",
        ),
        (None, None) => e.required_because(&pp, "port name or number is required"),
        (Some(n), None) => {
            e.port_number(n, &at(&pp, "number"));
        }
        (None, Some(name)) => {
            if let Some(name) = e.string(name, &at(&pp, "name"))
                && let Err(detail) = names::iana_svc_name(name)
            {
                e.invalid(&at(&pp, "name"), &port["name"], detail);
            }
        }
    }
}
