//! Pod, pod template and Deployment checks.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::{Errs, at, check_int_or_port_name, check_label_selector, check_protocol, field, index};
use crate::meta::LabelSelector;
use crate::names;

pub(super) fn check_pod(e: &mut Errs, root: &Map<String, Value>) {
    match field(root, "spec") {
        None => e.required("spec"),
        Some(spec) => check_pod_spec(e, spec, "spec"),
    }
}

pub(super) fn check_deployment(e: &mut Errs, root: &Map<String, Value>) {
    let Some(spec) = field(root, "spec") else {
        e.required("spec");
        return;
    };
    let Some(spec) = e.object(spec, "spec") else {
        return;
    };
    e.opt_int32_min(spec, "replicas", "spec", 0);

    let selector = match field(spec, "selector") {
        None => {
            e.required("spec.selector");
            None
        }
        Some(sel) => {
            let before = e.list.len();
            check_label_selector(e, sel, "spec.selector");
            let parsed: Option<LabelSelector> = (e.list.len() == before)
                .then(|| serde_json::from_value(sel.clone()).ok())
                .flatten();
            if let Some(s) = &parsed
                && s.is_empty()
            {
                e.invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                );
            }
            parsed.filter(|s| !s.is_empty())
        }
    };

    let Some(template) = field(spec, "template") else {
        e.required("spec.template");
        return;
    };
    let Some(template) = e.object(template, "spec.template") else {
        return;
    };
    // Template labels, when they are valid (otherwise matching them would only add noise).
    let mut labels = Some(BTreeMap::new());
    let before = e.list.len();
    if let Some(meta) = e.opt_object(template, "metadata", "spec.template") {
        super::check_labels(e, meta, "labels", "spec.template.metadata");
        if let Some(Value::Object(l)) = field(meta, "labels") {
            labels = Some(
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect(),
            );
        }
    }
    if e.list.len() != before {
        labels = None;
    }
    if let (Some(sel), Some(labels)) = (selector, labels)
        && !sel.matches(&labels)
    {
        let shown = field(template, "metadata")
            .and_then(|m| m.get("labels"))
            .cloned()
            .unwrap_or(Value::Null);
        e.invalid(
            "spec.template.metadata.labels",
            &shown,
            "`selector` does not match template `labels`",
        );
    }
    match field(template, "spec") {
        None => e.required("spec.template.spec"),
        Some(pod_spec) => check_pod_spec(e, pod_spec, "spec.template.spec"),
    }
}

/// A pod spec at `p` (`spec` or `spec.template.spec`).
pub(super) fn check_pod_spec(e: &mut Errs, spec: &Value, p: &str) {
    let Some(spec) = e.object(spec, p) else {
        return;
    };
    if let Some(node) = e.opt_str(spec, "nodeName", p)
        && let Err(detail) = names::dns1123_subdomain(node)
    {
        e.invalid(&at(p, "nodeName"), &spec["nodeName"], detail);
    }
    e.opt_bool(spec, "hostNetwork", p);
    if let Some(v) = field(spec, "terminationGracePeriodSeconds") {
        non_negative(e, v, &at(p, "terminationGracePeriodSeconds"));
    }
    for f in ["hostname", "subdomain"] {
        if let Some(s) = e.opt_str(spec, f, p)
            && let Err(detail) = names::dns1123_label(s)
        {
            e.invalid(&at(p, f), &spec[f], detail);
        }
    }
    if let Some(policy) = e.opt_str(spec, "restartPolicy", p)
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        e.unsupported(
            &at(p, "restartPolicy"),
            &spec["restartPolicy"],
            &["Always", "OnFailure", "Never"],
        );
    }

    let mut container_names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    if let Some(init) = e.opt_array(spec, "initContainers", p) {
        let ip = at(p, "initContainers");
        for (i, c) in init.iter().enumerate() {
            check_container(e, c, &index(&ip, i), &mut container_names, &mut port_names);
        }
    }
    match e.opt_array(spec, "containers", p) {
        None if field(spec, "containers").is_none() => e.required(&at(p, "containers")),
        None => {}
        Some([]) => e.required(&at(p, "containers")),
        Some(containers) => {
            let cp = at(p, "containers");
            for (i, c) in containers.iter().enumerate() {
                check_container(e, c, &index(&cp, i), &mut container_names, &mut port_names);
            }
        }
    }
}

fn check_container<'a>(
    e: &mut Errs,
    c: &'a Value,
    p: &str,
    names_seen: &mut BTreeSet<&'a str>,
    port_names: &mut BTreeSet<&'a str>,
) {
    let Some(c) = e.object(c, p) else { return };
    if let Some(name) = e.req_str(c, "name", p) {
        if let Err(detail) = names::dns1123_label(name) {
            e.invalid(&at(p, "name"), &c["name"], detail);
        } else if !names_seen.insert(name) {
            e.duplicate(&at(p, "name"), &c["name"]);
        }
    }
    e.opt_str(c, "image", p);
    e.opt_str_list(c, "command", p);
    e.opt_str_list(c, "args", p);
    e.opt_str(c, "workingDir", p);
    if let Some(ports) = e.opt_array(c, "ports", p) {
        let pp = at(p, "ports");
        for (i, port) in ports.iter().enumerate() {
            let pp = index(&pp, i);
            let Some(port) = e.object(port, &pp) else {
                continue;
            };
            match field(port, "containerPort") {
                None => e.required(&at(&pp, "containerPort")),
                Some(v) => {
                    e.port_number(v, &at(&pp, "containerPort"));
                }
            }
            if let Some(name) = e.opt_str(port, "name", &pp) {
                if let Err(detail) = names::iana_svc_name(name) {
                    e.invalid(&at(&pp, "name"), &port["name"], detail);
                } else if !port_names.insert(name) {
                    e.duplicate(&at(&pp, "name"), &port["name"]);
                }
            }
            check_protocol(e, port, &pp);
            if let Some(v) = field(port, "hostPort") {
                e.int_in(v, &at(&pp, "hostPort"), 0, 65535);
            }
            if let Some(ip) = e.opt_str(port, "hostIP", &pp)
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                e.invalid(
                    &at(&pp, "hostIP"),
                    &port["hostIP"],
                    "must be a valid IP address",
                );
            }
        }
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if let Some(v) = field(c, probe) {
            check_probe(e, v, &at(p, probe));
        }
    }
    if let Some(v) = field(c, "lifecycle") {
        check_lifecycle(e, v, &at(p, "lifecycle"));
    }
}

fn check_probe(e: &mut Errs, v: &Value, p: &str) {
    let Some(probe) = e.object(v, p) else { return };
    check_handler(e, probe, p, &["exec", "httpGet", "tcpSocket", "grpc"]);
    for f in [
        "periodSeconds",
        "initialDelaySeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        e.opt_int32_min(probe, f, p, 0);
    }
}

/// `lifecycle.preStop` (and `postStart`): one handler of exec, httpGet, tcpSocket, sleep.
fn check_lifecycle(e: &mut Errs, v: &Value, p: &str) {
    let Some(lc) = e.object(v, p) else { return };
    for hook in ["preStop", "postStart"] {
        if let Some(h) = field(lc, hook) {
            let hp = at(p, hook);
            if let Some(h) = e.object(h, &hp) {
                check_handler(e, h, &hp, &["exec", "httpGet", "tcpSocket", "sleep"]);
            }
        }
    }
}

/// One handler of `kinds` (a probe's or a hook's), and the fields of the one given.
fn check_handler(e: &mut Errs, probe: &Map<String, Value>, p: &str, kinds: &[&str]) {
    let handlers: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|h| field(probe, h).is_some())
        .collect();
    match handlers.len() {
        0 => e.required_because(p, "must specify a handler type"),
        1 => {}
        _ => e.forbidden(
            &at(p, handlers[1]),
            "may not specify more than 1 handler type",
        ),
    }
    if let Some(exec) = e.opt_object(probe, "exec", p) {
        let xp = at(p, "exec");
        match e.opt_str_list(exec, "command", &xp) {
            Some(cmd) if !cmd.is_empty() => {}
            Some(_) | None => {
                if !matches!(field(exec, "command"), Some(v) if !v.is_array()) {
                    e.required(&at(&xp, "command"));
                }
            }
        }
    }
    if let Some(get) = e.opt_object(probe, "httpGet", p) {
        let gp = at(p, "httpGet");
        check_probe_port(e, get, &gp);
        e.opt_str(get, "path", &gp);
        e.opt_str(get, "host", &gp);
        if let Some(scheme) = e.opt_str(get, "scheme", &gp)
            && !matches!(scheme, "HTTP" | "HTTPS")
        {
            e.unsupported(&at(&gp, "scheme"), &get["scheme"], &["HTTP", "HTTPS"]);
        }
    }
    if let Some(tcp) = e.opt_object(probe, "tcpSocket", p) {
        let tp = at(p, "tcpSocket");
        check_probe_port(e, tcp, &tp);
        e.opt_str(tcp, "host", &tp);
    }
    if kinds.contains(&"sleep")
        && let Some(sleep) = e.opt_object(probe, "sleep", p)
    {
        let sp = at(p, "sleep");
        match field(sleep, "seconds") {
            None => e.required(&at(&sp, "seconds")),
            Some(v) => non_negative(e, v, &at(&sp, "seconds")),
        }
    }
}

/// An int64 count of seconds, at least 0.
fn non_negative(e: &mut Errs, v: &Value, p: &str) {
    if e.int(v, p).is_some_and(|i| i < 0) {
        e.invalid(p, v, "must be greater than or equal to 0");
    }
}

fn check_probe_port(e: &mut Errs, m: &Map<String, Value>, p: &str) {
    match field(m, "port") {
        None => e.required(&at(p, "port")),
        Some(v) => check_int_or_port_name(e, v, &at(p, "port")),
    }
}
