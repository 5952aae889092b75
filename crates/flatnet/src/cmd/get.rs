//! `flatnet get KIND [NAME] [-n NS | -A] [-o wide|json|yaml]`; tables as kubectl prints them
//! (Services: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE; EndpointSlices: NAME ADDRESSTYPE
//! PORTS ENDPOINTS AGE).

use model::Kind;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    all: bool,
    #[arg(short = 'o', long = "output", value_parser = ["wide", "json", "yaml"])]
    output: Option<String>,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let kind = super::parse_kind(&args.kind)?;
    let store = lab::client::connect(&lab).await?;
    let ns = (!args.all).then_some(args.namespace.as_str());
    let mut items = lab::api::get(&store, kind, ns, args.name.as_deref()).await?;
    if kind == Kind::Node {
        lab::api::annotate_nodes(&store, &mut items).await?;
    }
    items.sort_by_key(|v| {
        (
            s(v, "/metadata/namespace").to_string(),
            s(v, "/metadata/name").to_string(),
        )
    });
    match args.output.as_deref() {
        Some("json") | Some("yaml") => {
            let v = if args.name.is_some() && items.len() == 1 {
                items.remove(0)
            } else {
                model::list_json(items)
            };
            if args.output.as_deref() == Some("json") {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", model::to_yaml(&v));
            }
        }
        out => {
            if items.is_empty() {
                eprintln!(
                    "No resources found{}.",
                    ns.filter(|_| kind.namespaced())
                        .map(|n| format!(" in {n} namespace"))
                        .unwrap_or_default()
                );
                return Ok(0);
            }
            print_table(
                kind,
                &items,
                args.all && kind.namespaced(),
                out == Some("wide"),
            );
        }
    }
    Ok(0)
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn age(v: &Value) -> String {
    let Some(t) = lab::parse_rfc3339(s(v, "/metadata/creationTimestamp")) else {
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

fn row(kind: Kind, v: &Value, wide: bool) -> (Vec<&'static str>, Vec<String>) {
    match kind {
        Kind::Pod => {
            let n = v
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let r = if lab::api::is_ready(v) { n } else { 0 };
            let mut h = vec!["NAME", "READY", "STATUS", "IP", "NODE", "AGE"];
            let mut c = vec![
                s(v, "/metadata/name").into(),
                format!("{r}/{n}"),
                // As kubectl prints a pod being deleted gracefully.
                if lab::api::is_terminating(v) {
                    "Terminating".into()
                } else {
                    s(v, "/status/phase").into()
                },
                or_none(s(v, "/status/podIP")),
                or_none(s(v, "/spec/nodeName")),
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
                s(v, "/metadata/name").into(),
                if lab::api::is_ready(v) {
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
                or_none(s(v, "/spec/podCIDR")),
                or_none(s(v, "/metadata/annotations/flatnet.io~1backend-type")),
                or_none(s(v, "/metadata/annotations/flatnet.io~1agent-health")),
                age(v),
            ],
        ),
        Kind::Deployment => (
            vec!["NAME", "REPLICAS", "AGE"],
            vec![
                s(v, "/metadata/name").into(),
                v.pointer("/spec/replicas")
                    .map(|r| r.to_string())
                    .unwrap_or("1".into()),
                age(v),
            ],
        ),
        Kind::Namespace => (
            vec!["NAME", "STATUS", "AGE"],
            vec![s(v, "/metadata/name").into(), "Active".into(), age(v)],
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
                s(v, "/metadata/name").into(),
                type_.into(),
                or_none(s(v, "/spec/clusterIP")),
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
                s(v, "/metadata/name").into(),
                or_none(s(v, "/spec/ingressClassName")),
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
                s(v, "/metadata/name").into(),
                s(v, "/addressType").into(),
                slice_ports(v),
                slice_endpoints(v),
                age(v),
            ],
        ),
        Kind::IngressClass => (
            vec!["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
            vec![
                s(v, "/metadata/name").into(),
                s(v, "/spec/controller").into(),
                or_none(s(v, "/spec/parameters/name")),
                age(v),
            ],
        ),
        _ => {
            let mut h = vec!["NAME", "AGE"];
            let mut c = vec![s(v, "/metadata/name").to_string(), age(v)];
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
        "ExternalName" => s(v, "/spec/externalName").into(),
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
    let mut l: Vec<String> = lab::api::labels_of(v)
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

fn print_table(kind: Kind, items: &[Value], with_ns: bool, wide: bool) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<&str> = Vec::new();
    for v in items {
        let (h, mut c) = row(kind, v, wide);
        if with_ns {
            c.insert(0, s(v, "/metadata/namespace").into());
        }
        header = h;
        rows.push(c);
    }
    if with_ns {
        header.insert(0, "NAMESPACE");
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}
