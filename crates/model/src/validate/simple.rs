//! Secret and Node checks.

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{Errs, at, index, index_key};
use crate::names;
use crate::secret::base64_decode;

pub(super) fn check_secret(e: &mut Errs, root: &Map<String, Value>) {
    let type_ = e.opt_str(root, "type", "").unwrap_or("Opaque");
    let mut keys = Vec::new();
    if let Some(data) = e.opt_str_map(root, "data", "") {
        for (k, v) in data {
            if let Err(detail) = names::config_map_key(k) {
                e.invalid("data", &Value::from(k), detail);
            }
            if let Err(detail) = base64_decode(v) {
                e.invalid(&index_key("data", k), &Value::from(v), detail);
            }
            keys.push(k);
        }
    }
    // Left in place by parse_manifests only when some value is not a string.
    if let Some(data) = e.opt_str_map(root, "stringData", "") {
        for (k, _) in data {
            if let Err(detail) = names::config_map_key(k) {
                e.invalid("stringData", &Value::from(k), detail);
            }
            keys.push(k);
        }
    }
    e.opt_bool(root, "immutable", "");
    if type_ == "kubernetes.io/tls" {
        for k in ["tls.crt", "tls.key"] {
            if !keys.contains(&k) {
                e.required(&index_key("data", k));
            }
        }
    }
}

pub(super) fn check_node(e: &mut Errs, root: &Map<String, Value>) {
    if let Some(spec) = e.opt_object(root, "spec", "") {
        if let Some(cidr) = e.opt_str(spec, "podCIDR", "spec")
            && cidr.parse::<IpNet>().is_err()
        {
            e.invalid(
                "spec.podCIDR",
                &spec["podCIDR"],
                "must be a valid CIDR value",
            );
        }
        if let Some(cidrs) = e.opt_str_list(spec, "podCIDRs", "spec") {
            for (i, c) in cidrs.iter().enumerate() {
                if c.parse::<IpNet>().is_err() {
                    e.invalid(
                        &index("spec.podCIDRs", i),
                        &Value::from(*c),
                        "must be a valid CIDR value",
                    );
                }
            }
        }
    }
    let Some(status) = e.opt_object(root, "status", "") else {
        return;
    };
    if let Some(addrs) = e.opt_array(status, "addresses", "status") {
        for (i, a) in addrs.iter().enumerate() {
            let p = index("status.addresses", i);
            let Some(a) = e.object(a, &p) else { continue };
            const TYPES: [&str; 5] = [
                "Hostname",
                "InternalIP",
                "ExternalIP",
                "InternalDNS",
                "ExternalDNS",
            ];
            if let Some(t) = e.req_str(a, "type", &p)
                && !TYPES.contains(&t)
            {
                e.unsupported(&at(&p, "type"), &a["type"], &TYPES);
            }
            e.req_str(a, "address", &p);
        }
    }
    if let Some(conds) = e.opt_array(status, "conditions", "status") {
        for (i, c) in conds.iter().enumerate() {
            let p = index("status.conditions", i);
            let Some(c) = e.object(c, &p) else { continue };
            e.req_str(c, "type", &p);
            e.req_str(c, "status", &p);
        }
    }
}
