//! Service and EndpointSlice checks.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::{Errs, at, check_int_or_port_name, check_labels, check_protocol, field, index};
use crate::names;

const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub(super) fn check_service(e: &mut Errs, root: &Map<String, Value>) {
    let Some(spec) = field(root, "spec") else {
        e.required("spec");
        return;
    };
    let Some(spec) = e.object(spec, "spec") else {
        return;
    };
    let type_ = match e.opt_str(spec, "type", "spec") {
        None => "ClusterIP",
        Some(t) if TYPES.contains(&t) => t,
        Some(_) => {
            e.unsupported("spec.type", &spec["type"], &TYPES);
            return;
        }
    };
    let node_ports_allowed = matches!(type_, "NodePort" | "LoadBalancer");

    let cluster_ip = e.opt_str(spec, "clusterIP", "spec");
    if let Some(ip) = cluster_ip
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<IpAddr>().is_err()
    {
        e.invalid(
            "spec.clusterIP",
            &spec["clusterIP"],
            "must be empty, 'None', or a valid IP address",
        );
    }
    if let Some(ips) = e.opt_str_list(spec, "clusterIPs", "spec") {
        for (i, ip) in ips.iter().enumerate() {
            if *ip != "None" && ip.parse::<IpAddr>().is_err() {
                e.invalid(
                    &index("spec.clusterIPs", i),
                    &Value::from(*ip),
                    "must be 'None' or a valid IP address",
                );
            }
        }
        if let (Some(first), Some(ip)) = (ips.first(), cluster_ip)
            && !ip.is_empty()
            && first != &ip
        {
            e.invalid(
                "spec.clusterIPs[0]",
                &Value::from(*first),
                "must match `clusterIP` when both are specified",
            );
        }
    }
    let headless = cluster_ip == Some("None");
    if headless && node_ports_allowed {
        e.invalid(
            "spec.clusterIP",
            &spec["clusterIP"],
            "may not be set to 'None' for LoadBalancer or NodePort services",
        );
    }

    if type_ == "ExternalName" {
        if let Some(name) = e.req_str(spec, "externalName", "spec")
            && let Err(detail) = names::dns1123_subdomain(name.strip_suffix('.').unwrap_or(name))
        {
            e.invalid("spec.externalName", &spec["externalName"], detail);
        }
        if cluster_ip.is_some_and(|ip| !ip.is_empty()) {
            e.forbidden("spec.clusterIP", "may not be set for ExternalName services");
        }
        if matches!(field(spec, "clusterIPs"), Some(Value::Array(a)) if !a.is_empty()) {
            e.forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            );
        }
    }

    let ports = e.opt_array(spec, "ports", "spec").unwrap_or_default();
    let ports_wrong_type = matches!(field(spec, "ports"), Some(v) if !v.is_array());
    if ports.is_empty() && !ports_wrong_type && type_ != "ExternalName" && !headless {
        e.required("spec.ports");
    }
    let mut port_names = BTreeSet::new();
    let mut port_protos = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let pp = index("spec.ports", i);
        let Some(port) = e.object(port, &pp) else {
            continue;
        };
        match e.opt_str(port, "name", &pp) {
            Some(name) if !name.is_empty() => {
                if let Err(detail) = names::dns1123_label(name) {
                    e.invalid(&at(&pp, "name"), &port["name"], detail);
                } else if !port_names.insert(name) {
                    e.duplicate(&at(&pp, "name"), &port["name"]);
                }
            }
            _ if ports.len() > 1 && !matches!(field(port, "name"), Some(v) if !v.is_string()) => e
                .required_because(
                    &at(&pp, "name"),
                    "required when there is more than one port",
                ),
            _ => {}
        }
        check_protocol(e, port, &pp);
        let proto = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        let number = match field(port, "port") {
            None => {
                e.required(&at(&pp, "port"));
                None
            }
            Some(v) => e.port_number(v, &at(&pp, "port")),
        };
        if let Some(n) = number
            && !port_protos.insert((n, proto))
        {
            e.duplicate(&pp, &json!({"port": n, "protocol": proto}));
        }
        if let Some(v) = field(port, "targetPort") {
            check_int_or_port_name(e, v, &at(&pp, "targetPort"));
        }
        if let Some(v) = field(port, "nodePort") {
            let np = at(&pp, "nodePort");
            if let Some(n) = e.int_in(v, &np, 0, 65535)
                && n != 0
            {
                if !node_ports_allowed {
                    e.forbidden(&np, format!("may not be used when `type` is '{type_}'"));
                } else if !node_ports.insert((n, proto)) {
                    e.duplicate(&np, v);
                }
            }
        }
        e.opt_str(port, "appProtocol", &pp);
    }

    check_labels(e, spec, "selector", "spec");
    if let Some(aff) = e.opt_str(spec, "sessionAffinity", "spec")
        && !matches!(aff, "None" | "ClientIP")
    {
        e.unsupported(
            "spec.sessionAffinity",
            &spec["sessionAffinity"],
            &["None", "ClientIP"],
        );
    }
    if let Some(policy) = e.opt_str(spec, "externalTrafficPolicy", "spec") {
        if !matches!(policy, "Cluster" | "Local") {
            e.unsupported(
                "spec.externalTrafficPolicy",
                &spec["externalTrafficPolicy"],
                &["Cluster", "Local"],
            );
        } else if !node_ports_allowed {
            e.forbidden(
                "spec.externalTrafficPolicy",
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            );
        }
    }
    if let Some(policy) = e.opt_str(spec, "internalTrafficPolicy", "spec")
        && !matches!(policy, "Cluster" | "Local")
    {
        e.unsupported(
            "spec.internalTrafficPolicy",
            &spec["internalTrafficPolicy"],
            &["Cluster", "Local"],
        );
    }
    if let Some(ips) = e.opt_str_list(spec, "externalIPs", "spec") {
        for (i, ip) in ips.iter().enumerate() {
            if ip.parse::<IpAddr>().is_err() {
                e.invalid(
                    &index("spec.externalIPs", i),
                    &Value::from(*ip),
                    "must be a valid IP address",
                );
            }
        }
    }
    if let Some(ip) = e.opt_str(spec, "loadBalancerIP", "spec")
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        e.invalid(
            "spec.loadBalancerIP",
            &spec["loadBalancerIP"],
            "must be a valid IP address",
        );
    }
    e.opt_bool(spec, "publishNotReadyAddresses", "spec");
    check_service_extras(e, spec, type_);
}

/// `healthCheckNodePort`, `sessionAffinityConfig`, `allocateLoadBalancerNodePorts`,
/// `ipFamilies` and `ipFamilyPolicy`.
fn check_service_extras(e: &mut Errs, spec: &Map<String, Value>, type_: &str) {
    if let Some(v) = field(spec, "healthCheckNodePort")
        && let Some(n) = e.int_in(v, "spec.healthCheckNodePort", 0, 65535)
        && n != 0
    {
        let local = spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
        if type_ != "LoadBalancer" || !local {
            e.forbidden(
                "spec.healthCheckNodePort",
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            );
        }
    }
    if let Some(cfg) = e.opt_object(spec, "sessionAffinityConfig", "spec") {
        let affinity = spec
            .get("sessionAffinity")
            .and_then(Value::as_str)
            .unwrap_or("None");
        if affinity != "ClientIP" {
            e.invalid(
                "spec.sessionAffinityConfig",
                &Value::Object(cfg.clone()),
                format!("must not be set when `sessionAffinity` is {affinity}"),
            );
        } else if let Some(client) = e.opt_object(cfg, "clientIP", "spec.sessionAffinityConfig")
            && let Some(v) = field(client, "timeoutSeconds")
        {
            e.int_in(
                v,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                1,
                86_400,
            );
        }
    }
    if e.opt_bool(spec, "allocateLoadBalancerNodePorts", "spec")
        .is_some()
        && type_ != "LoadBalancer"
    {
        e.forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        );
    }
    if let Some(fams) = e.opt_str_list(spec, "ipFamilies", "spec") {
        for (i, f) in fams.iter().enumerate() {
            if !matches!(*f, "IPv4" | "IPv6") {
                e.unsupported(
                    &index("spec.ipFamilies", i),
                    &Value::from(*f),
                    &["IPv4", "IPv6"],
                );
            }
        }
    }
    if let Some(p) = e.opt_str(spec, "ipFamilyPolicy", "spec")
        && !matches!(p, "SingleStack" | "PreferDualStack" | "RequireDualStack")
    {
        e.unsupported(
            "spec.ipFamilyPolicy",
            &spec["ipFamilyPolicy"],
            &["SingleStack", "PreferDualStack", "RequireDualStack"],
        );
    }
}

pub(super) fn check_endpoint_slice(e: &mut Errs, root: &Map<String, Value>) {
    let family = match e.req_str(root, "addressType", "") {
        Some(t @ ("IPv4" | "IPv6" | "FQDN")) => Some(t),
        Some(_) => {
            e.unsupported(
                "addressType",
                &root["addressType"],
                &["IPv4", "IPv6", "FQDN"],
            );
            None
        }
        None => None,
    };
    if let Some(endpoints) = e.opt_array(root, "endpoints", "") {
        for (i, ep) in endpoints.iter().enumerate() {
            let p = index("endpoints", i);
            let Some(ep) = e.object(ep, &p) else { continue };
            match e.opt_str_list(ep, "addresses", &p) {
                Some(addrs) if !addrs.is_empty() => {
                    for (j, a) in addrs.iter().enumerate() {
                        let ok = match family {
                            Some("IPv4") => a.parse::<std::net::Ipv4Addr>().is_ok(),
                            Some("IPv6") => a.parse::<std::net::Ipv6Addr>().is_ok(),
                            Some(_) => names::dns1123_subdomain(a).is_ok(),
                            None => true,
                        };
                        if !ok {
                            e.invalid(
                                &index(&at(&p, "addresses"), j),
                                &Value::from(*a),
                                format!("must be a valid {} address", family.unwrap_or("")),
                            );
                        }
                    }
                }
                _ => e.required(&at(&p, "addresses")),
            }
            if let Some(cond) = e.opt_object(ep, "conditions", &p) {
                let cp = at(&p, "conditions");
                for f in ["ready", "serving", "terminating"] {
                    e.opt_bool(cond, f, &cp);
                }
            }
            if let Some(node) = e.opt_str(ep, "nodeName", &p)
                && let Err(detail) = names::dns1123_subdomain(node)
            {
                e.invalid(&at(&p, "nodeName"), &ep["nodeName"], detail);
            }
            e.opt_str(ep, "hostname", &p);
            if let Some(target) = e.opt_object(ep, "targetRef", &p) {
                let tp = at(&p, "targetRef");
                for f in ["kind", "namespace", "name", "uid"] {
                    e.opt_str(target, f, &tp);
                }
            }
        }
    }
    if let Some(ports) = e.opt_array(root, "ports", "") {
        for (i, port) in ports.iter().enumerate() {
            let p = index("ports", i);
            let Some(port) = e.object(port, &p) else {
                continue;
            };
            if let Some(name) = e.opt_str(port, "name", &p)
                && !name.is_empty()
                && let Err(detail) = names::dns1123_label(name)
            {
                e.invalid(&at(&p, "name"), &port["name"], detail);
            }
            check_protocol(e, port, &p);
            if let Some(v) = field(port, "port") {
                e.port_number(v, &at(&p, "port"));
            }
            e.opt_str(port, "appProtocol", &p);
        }
    }
}

#[cfg(test)]
mod tests {
    fn errors(spec: &str) -> String {
        let yaml = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n{spec}\n");
        match crate::parse_manifests(&yaml, "t.yaml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn external_name_may_not_have_a_cluster_ip() {
        let e =
            errors("  type: ExternalName\n  externalName: db.example.test\n  clusterIP: 10.96.0.5");
        assert!(
            e.contains("spec.clusterIP: Forbidden: may not be set for ExternalName services"),
            "{e}"
        );
        let e = errors(
            "  type: ExternalName\n  externalName: db.example.test\n  clusterIPs: [10.96.0.5]",
        );
        assert!(e.contains("spec.clusterIPs: Forbidden"), "{e}");
        assert_eq!(
            errors("  type: ExternalName\n  externalName: db.example.test\n  clusterIP: \"\""),
            ""
        );
    }

    #[test]
    fn health_check_node_port_only_for_local_load_balancers() {
        let e = errors("  type: NodePort\n  healthCheckNodePort: 30100\n  ports: [{port: 80}]");
        assert!(e.contains("spec.healthCheckNodePort: Forbidden"), "{e}");
        let ok = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30100\n  ports: [{port: 80}]";
        assert_eq!(errors(ok), "");
        let e = errors(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 70000\n  ports: [{port: 80}]",
        );
        assert!(
            e.contains("spec.healthCheckNodePort: Invalid value: 70000"),
            "{e}"
        );
    }

    #[test]
    fn session_affinity_config_needs_client_ip_and_a_sane_timeout() {
        let e = errors(
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports: [{port: 80}]",
        );
        assert!(
            e.contains("spec.sessionAffinityConfig: Invalid value"),
            "{e}"
        );
        assert!(
            e.contains("must not be set when `sessionAffinity` is None"),
            "{e}"
        );
        let e = errors(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 80}]",
        );
        assert!(e.contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be between 1 and 86400, inclusive"), "{e}");
        assert_eq!(
            errors(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports: [{port: 80}]"
            ),
            ""
        );
    }

    #[test]
    fn allocate_lb_node_ports_and_ip_families_are_checked() {
        let e = errors("  allocateLoadBalancerNodePorts: false\n  ports: [{port: 80}]");
        assert!(
            e.contains("spec.allocateLoadBalancerNodePorts: Forbidden"),
            "{e}"
        );
        assert_eq!(
            errors(
                "  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n  ports: [{port: 80}]"
            ),
            ""
        );
        let e = errors("  ipFamilies: [IPv5]\n  ipFamilyPolicy: Sometimes\n  ports: [{port: 80}]");
        assert!(
            e.contains("spec.ipFamilies[0]: Unsupported value: \"IPv5\""),
            "{e}"
        );
        assert!(
            e.contains("spec.ipFamilyPolicy: Unsupported value: \"Sometimes\""),
            "{e}"
        );
    }
}
