//! The table columns of each kind (pure): what `flatnet get` prints and what the API server
//! answers kubectl's `as=Table` with, so the two show the same (kubectl's own columns where
//! flatnet has the data: Services NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE, EndpointSlices
//! NAME ADDRESSTYPE PORTS ENDPOINTS AGE, ...).

use model::Kind;
use serde_json::Value;

/// The string at a JSON pointer, or "".
pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// kubectl's AGE column: `42s`, `5m`, `3h`, `2d`; `<unknown>` without a creation time.
pub fn age(v: &Value) -> String {
    let Some(t) = crate::parse_rfc3339(str_at(v, "/metadata/creationTimestamp")) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = (now - t).max(0);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

/// The table row of one object, as `flatnet get` and `kubectl get` (through the API server's
/// `as=Table`) print it: the headers and the cells; `wide` adds the `-o wide` columns at the
/// end (so the narrow columns are a prefix of the wide ones).
pub fn row(kind: Kind, v: &Value, wide: bool) -> (Vec<&'static str>, Vec<String>) {
    match kind {
        Kind::Pod => {
            let n = v
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let r = if crate::api::is_ready(v) { n } else { 0 };
            let mut h = vec!["NAME", "READY", "STATUS", "IP", "NODE", "AGE"];
            let mut c = vec![
                str_at(v, "/metadata/name").into(),
                format!("{r}/{n}"),
                // As kubectl prints a pod being deleted gracefully.
                if crate::api::is_terminating(v) {
                    "Terminating".into()
                } else {
                    str_at(v, "/status/phase").into()
                },
                or_none(str_at(v, "/status/podIP")),
                or_none(str_at(v, "/spec/nodeName")),
                age(v),
            ];
            if wide {
                h.push("LABELS");
                c.push(labels(v));
            }
            (h, c)
        }
        Kind::Node => (
            vec![
                "NAME",
                "STATUS",
                "INTERNAL-IP",
                "POD-CIDR",
                "BACKEND",
                "AGENT",
                "AGE",
            ],
            vec![
                str_at(v, "/metadata/name").into(),
                if crate::api::is_ready(v) {
                    "Ready".into()
                } else {
                    "NotReady".into()
                },
                v.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or("<none>")
                    .into(),
                or_none(str_at(v, "/spec/podCIDR")),
                or_none(str_at(v, "/metadata/annotations/flatnet.io~1backend-type")),
                or_none(str_at(v, "/metadata/annotations/flatnet.io~1agent-health")),
                age(v),
            ],
        ),
        Kind::Deployment => (
            vec!["NAME", "REPLICAS", "AGE"],
            vec![
                str_at(v, "/metadata/name").into(),
                v.pointer("/spec/replicas")
                    .map(|r| r.to_string())
                    .unwrap_or("1".into()),
                age(v),
            ],
        ),
        Kind::Namespace => (
            vec!["NAME", "STATUS", "AGE"],
            vec![str_at(v, "/metadata/name").into(), "Active".into(), age(v)],
        ),
        Kind::Service => {
            let mut h = vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ];
            let type_ = v
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let mut c = vec![
                str_at(v, "/metadata/name").into(),
                type_.into(),
                or_none(str_at(v, "/spec/clusterIP")),
                service_external_ip(v, type_),
                service_ports(v),
                age(v),
            ];
            if wide {
                h.push("SELECTOR");
                c.push(selector(v));
            }
            (h, c)
        }
        Kind::Ingress => (
            vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
            vec![
                str_at(v, "/metadata/name").into(),
                or_none(str_at(v, "/spec/ingressClassName")),
                ingress_hosts(v),
                list(v, "/status/loadBalancer/ingress")
                    .iter()
                    .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                    .collect::<Vec<_>>()
                    .join(","),
                if list(v, "/spec/tls").is_empty() {
                    "80".into()
                } else {
                    "80, 443".into()
                },
                age(v),
            ],
        ),
        Kind::EndpointSlice => (
            vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            vec![
                str_at(v, "/metadata/name").into(),
                str_at(v, "/addressType").into(),
                slice_ports(v),
                slice_endpoints(v),
                age(v),
            ],
        ),
        Kind::IngressClass => (
            vec!["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
            vec![
                str_at(v, "/metadata/name").into(),
                str_at(v, "/spec/controller").into(),
                or_none(str_at(v, "/spec/parameters/name")),
                age(v),
            ],
        ),
        _ => {
            let mut h = vec!["NAME", "AGE"];
            let mut c = vec![str_at(v, "/metadata/name").to_string(), age(v)];
            if wide {
                h.push("LABELS");
                c.push(labels(v));
            }
            (h, c)
        }
    }
}

fn list<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// kubectl's EXTERNAL-IP column.
fn service_external_ip(v: &Value, type_: &str) -> String {
    let external: Vec<&str> = list(v, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match type_ {
        "ClusterIP" | "NodePort" => {
            if external.is_empty() {
                "<none>".into()
            } else {
                external.join(",")
            }
        }
        "LoadBalancer" => {
            let mut ips: Vec<&str> = list(v, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            ips.extend(external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => str_at(v, "/spec/externalName").into(),
        _ => "<unknown>".into(),
    }
}

/// kubectl's PORT(S) column: `80/TCP`, `80:30080/TCP`.
fn service_ports(v: &Value) -> String {
    let ports: Vec<String> = list(v, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_u64().filter(|n| *n > 0) {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn selector(v: &Value) -> String {
    let mut l: Vec<String> = v
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    l.sort();
    if l.is_empty() {
        "<none>".into()
    } else {
        l.join(",")
    }
}

/// kubectl's list of at most three, then `+ N more...`; `<unset>` when empty.
fn with_more(items: Vec<String>) -> String {
    const MAX: usize = 3;
    match items.len() {
        0 => "<unset>".into(),
        n if n > MAX => format!("{} + {} more...", items[..MAX].join(","), n - MAX),
        _ => items.join(","),
    }
}

fn slice_ports(v: &Value) -> String {
    with_more(
        list(v, "/ports")
            .iter()
            .map(|p| match (p["port"].as_u64(), p["name"].as_str()) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => "*".into(),
            })
            .collect(),
    )
}

fn slice_endpoints(v: &Value) -> String {
    with_more(
        list(v, "/endpoints")
            .iter()
            .flat_map(|e| list(e, "/addresses").iter())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
    )
}

/// kubectl's HOSTS column: the rule hosts, `*` for a rule without one.
fn ingress_hosts(v: &Value) -> String {
    let hosts: Vec<&str> = list(v, "/spec/rules")
        .iter()
        .map(|r| r["host"].as_str().unwrap_or("*"))
        .collect();
    if hosts.is_empty() {
        "*".into()
    } else {
        hosts.join(",")
    }
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

fn labels(v: &Value) -> String {
    let mut l: Vec<String> = crate::api::labels_of(v)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    l.sort();
    if l.is_empty() {
        "<none>".into()
    } else {
        l.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_rows_read_like_kubectl() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort",
            "clusterIP": "10.96.0.10", "selector": {"app": "web"},
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}});
        let (h, c) = row(Kind::Service, &svc, true);
        assert_eq!(
            h,
            [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
                "SELECTOR"
            ]
        );
        assert_eq!(
            &c[..5],
            [
                "web",
                "NodePort",
                "10.96.0.10",
                "<none>",
                "80:30080/TCP,53/UDP"
            ]
        );
        assert_eq!(c[5], "<unknown>", "no creationTimestamp");
        assert_eq!(c[6], "app=web");
    }

    #[test]
    fn narrow_columns_are_a_prefix_of_the_wide_ones() {
        let pod = json!({"metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}});
        for kind in Kind::ALL {
            let (narrow, cells) = row(kind, &pod, false);
            let (wide, wide_cells) = row(kind, &pod, true);
            assert_eq!(narrow[..], wide[..narrow.len()], "{kind}");
            assert_eq!(cells[..], wide_cells[..cells.len()], "{kind}");
            assert_eq!(narrow.len(), cells.len(), "{kind}");
            assert_eq!(narrow[0], "NAME", "{kind}");
        }
    }
}
