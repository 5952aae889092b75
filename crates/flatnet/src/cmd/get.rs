//! `flatnet get KIND [NAME] [-n NS | -A] [-o wide|json|yaml]`

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
                s(v, "/status/phase").into(),
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
